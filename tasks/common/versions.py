"""Which version of a package is installed: the one look-up behind model_info.json, summary.json and the backend."""

from __future__ import annotations

import importlib.metadata
import importlib.util

NOT_INSTALLED = "not installed"
# Importable but without metadata: a vendored or stand-in module (tests/stand_ins' torch_neuronx).
NO_METADATA = "present (no package metadata)"


def package_versions(*names: str) -> dict[str, str]:
    """{distribution name: its version}, or NOT_INSTALLED / NO_METADATA; never imports the package."""
    return {name: _version(name) for name in names}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        found = importlib.util.find_spec(name.replace("-", "_"))
    except (ImportError, ValueError):
        found = None
    return NO_METADATA if found else NOT_INSTALLED
