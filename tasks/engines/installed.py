"""Whether this environment has an engine: asked before anything starts (the command line, the flow's first line),
so it imports nothing heavy -- neither Ray nor torch."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from tasks.common.errors import PipelineError

RAY_FIX = "./setup.sh --ray (adds ray[serve] 2.60.0 to this checkout's .venv, pinned)"


class EngineMissing(PipelineError):
    """An engine the run names is not installed here; the fix says how to add it."""


def require_installed(names: Sequence[str]) -> None:
    """Ray Serve is the extra [ray]: a night that names it, where Ray is not installed, is refused naming the fix."""
    if "ray" in names and importlib.util.find_spec("ray") is None:
        raise EngineMissing(
            "Ray Serve is not installed in this environment (the ray engine needs the extra [ray])", fix=RAY_FIX
        )
