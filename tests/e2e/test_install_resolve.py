"""./setup.sh --dry-run --neuron resolved by pip against the package index: the Neuron profile is consistent, and
an exact pin in pyproject makes it unresolvable.

These run setup.sh on a copy of the files it reads (no venv, no stamp: a dry run installs nothing) and need PyPI
for metadata only (pip's fast-deps reads it with HTTP range requests), so they are end-to-end tests, not unit
tests; they are skipped, saying so, where the index cannot be reached. Neuron's own packages are not on PyPI:
stub wheels built at test time (tests/stand_ins/wheels/build.py, declaring what the real ones require) stand in
for them, through PIP_FIND_LINKS, with Neuron's index switched off (NEURON_INDEX_URL=).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.unit.test_install_profiles import ROOT, SETUP_FILES, pins

pytestmark = pytest.mark.e2e  # pip resolves against PyPI (tens of seconds): once per CI run, not per environment


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").split()[0].rstrip("/")


@pytest.fixture(scope="module")
def index_reachable():
    try:
        urllib.request.urlopen(f"{_index_url()}/pip/", timeout=15).close()
    except OSError as error:
        pytest.skip(f"the dry-run resolves need the package index, not reachable here: {_index_url()} ({error})")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of what setup.sh reads, so a dry run provably touches nothing of the checkout."""
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in SETUP_FILES:
        shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture(scope="module")
def stub_wheels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stub-wheels")
    subprocess.run(
        [sys.executable, str(ROOT / "tests/stand_ins/wheels/build.py"), str(out)], check=True, capture_output=True
    )
    return out


def neuron_dry_run(tree: Path, stub_wheels: Path, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(stub_wheels), os.environ.get("PIP_FIND_LINKS")]))
    env["NEURON_INDEX_URL"] = ""  # Neuron's index: not reachable here; the stubs stand in
    env["PYTHON"] = sys.executable  # resolve for this interpreter's Python
    return subprocess.run(
        ["./setup.sh", "--dry-run", "--neuron", *flags], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_neuron_profile_resolves_with_what_neurons_packages_require_and_with_ray(
    index_reachable, tree, stub_wheels
):
    # With --ray, the largest set the profile installs: ray[serve] beside torch 2.9.0 and the profile's numpy.
    done = neuron_dry_run(tree, stub_wheels, "--ray")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines == sorted(lines, key=str.lower)
    resolved = {canonicalize_name(name): version for name, _, version in (line.partition("==") for line in lines)}

    pinned = pins("constraints-neuron.txt")
    assert resolved["torch-neuronx"] == "2.9.0.2.15.32035"
    assert resolved["neuronx-cc"] == "2.27.5334.0"
    assert resolved["libneuronxla"] == "2.2.17544.0"
    assert resolved["torch"].startswith("2.9.")
    assert resolved["numpy"] == pinned["numpy"]
    assert resolved["ray"] == "2.60.0"
    # neuronx-cc asks for islpy~=2026.1, which a resolve left to itself meets with 2026.2.x: the pin holds it.
    assert resolved["islpy"] == pinned["islpy"] and Version(resolved["islpy"]).release[:2] == (2026, 1)
    # A consistent set: pip took every pin, and nothing it installs is left unpinned but what torch 2.9.0
    # pins itself (its CUDA libraries, triton), this project, and setuptools (torch's, on Python >= 3.12).
    assert {name: resolved[name] for name in pinned} == pinned
    unpinned = {name for name in resolved if name not in pinned}
    assert {name for name in unpinned if not name.startswith("nvidia-")} <= {
        "triton",
        "bert-serving-validation",
        "setuptools",
    }
    # Installed nothing: no venv, no stamp.
    assert "nothing installed" in done.stderr
    assert not (tree / ".venv").exists()
