"""package: the traced graph(s), the deployment's code and the tokenizer files -> a directory Ray Serve loads.

The .mar's counterpart for Ray Serve, in the run's model store:

    <store>/<model name>.serve/
        model/      model_info.json, one graph per length bucket, the tokenizer files: what the replica loads
        serving/    the deployment (serving/ray_deployment.py) and what it imports (model, contract, claims,
                    batch_gate)
        package.json  what is inside: the entry point, each file's size and sha256

Each replica imports serving/ from here (deploy puts the package first on its PYTHONPATH), not from the checkout,
and loads the model from here: what a night serves is what it packed, and nothing is downloaded when a replica
starts. The graphs are hard links where the file system allows (they are large, and the traced model never
changes once written), else copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tasks.common.config import REPO_ROOT
from tasks.engines.seam import EngineError, Package
from tasks.prepare.trace import TracedModel

SUFFIX = ".serve"
ENTRY_POINT = "serving.ray_deployment:ParaphraseReplica"
# The deployment and what it imports, shipped as the package serving/.
SERVING_FILES = ("__init__.py", "contract.py", "claims.py", "model.py", "batch_gate.py", "ray_deployment.py")
MANIFEST = "package.json"


def model_dir(package: Package) -> Path:
    return package.path / "model"


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(source, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package(traced: TracedModel, store: Path) -> Package:
    """The Serve package of a traced model; a package left by an earlier call for the same name is replaced."""
    name = traced.info.model_name
    root = Path(store) / f"{name}{SUFFIX}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "model").mkdir(parents=True)
    (root / "serving").mkdir()
    files = traced.info.files(traced.model_dir)
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise EngineError(f"the traced model is incomplete, missing {missing}", fix="run the trace stage again")
    for source in files:
        _place(source, root / "model" / source.name)
    for name_ in SERVING_FILES:
        shutil.copy2(REPO_ROOT / "serving" / name_, root / "serving" / name_)
    inside = sorted(p for p in root.rglob("*") if p.is_file())
    manifest = {
        "entry_point": ENTRY_POINT,
        "model_name": name,
        "files": {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in inside},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Package(engine="ray", model_name=name, path=root, info=traced.info)
