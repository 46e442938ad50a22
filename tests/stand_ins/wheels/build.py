"""Build stub wheels of Neuron's own packages, for resolving the Neuron install profile off Neuron's index.

    python tests/stand_ins/wheels/build.py OUT_DIR

writes one tiny wheel per Neuron package below (those not on PyPI) into OUT_DIR (made if missing) and
prints their paths. A stub carries only its *.dist-info (no module: installed by mistake, it shadows
nothing): METADATA declares the name, version, Requires-Python and Requires-Dist the real package declares,
as far as public evidence shows -- tests/stand_ins/README.md ("Stub wheels (install profiles)") cites where
each line comes from and which of the real requirements are left out. The point is the resolve: `PIP_FIND_LINKS=OUT_DIR
NEURON_INDEX_URL= ./setup.sh --neuron --dry-run` proves pyproject's extra [neuron] + constraints-neuron.txt
resolve together with what torch-neuronx / neuronx-cc ask for, without Neuron's index.

Deterministic: the same bytes every run (fixed order, fixed zip timestamps). Standard library only.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

# (name, version, Requires-Python, Requires-Dist). Neuron SDK 2.32.0 pairs its compiler with the last
# torch-neuronx shipped (Neuron 2.31.0): `pip install neuronx-cc==2.27.5334.0 torch-neuronx==2.9.0.2.15.32035`.
# tests/stand_ins/README.md ("Stub wheels") cites each requirement.
STUBS: list[tuple[str, str, str, list[str]]] = [
    (
        "torch-neuronx",
        "2.9.0.2.15.32035",
        ">=3.11",
        ["torch==2.9.*", "torch-xla==2.9.*", "libneuronxla<2.3,>=2.2"],
    ),
    (
        "libneuronxla",
        "2.2.17544.0",
        ">=3.11",
        ["neuronx-cc~=2.0", "boto3", "botocore"],
    ),
    (
        "neuronx-cc",
        "2.27.5334.0",
        ">=3.11",
        [
            "numpy>=1.21.6",
            "scipy>=1.13",
            # Loose: ~=2026.1 admits islpy 2026.2.x, which breaks every compile (NCC_ISMP902); the profile pins it.
            "islpy~=2026.1",
            "nki~=0.6.0",
            "ml_dtypes>=0.2.0",
            "python-daemon>=2.2.4",
            "requests-unixsocket>=0.1.5",
            "pgzip>=0.3.0",
            "ec2-metadata~=2.10",
        ],
    ),
    ("nki", "0.6.0", ">=3.11", []),
]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def _dist(name: str) -> str:
    """The distribution name as wheel file and .dist-info names spell it (PEP 427 / 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(out_dir: Path, name: str, version: str, requires_python: str, requires: list[str]) -> Path:
    info = f"{_dist(name)}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            "Summary: Stub of a Neuron package for install-profile resolution tests; contains no code.\n",
            f"Requires-Python: {requires_python}\n",
            *(f"Requires-Dist: {requirement}\n" for requirement in requires),
        ]
    )
    wheel = (
        "Wheel-Version: 1.0\nGenerator: bert-serving-validation stub wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files = {f"{info}/METADATA": metadata.encode(), f"{info}/WHEEL": wheel.encode()}
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()

    path = out_dir / f"{_dist(name)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            entry = zipfile.ZipInfo(member, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return path


def build(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [build_wheel(out_dir, *stub) for stub in STUBS]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/stand_ins/wheels/build.py OUT_DIR")
    for wheel_path in build(Path(sys.argv[1])):
        print(wheel_path)
