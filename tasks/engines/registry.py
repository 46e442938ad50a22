"""The engines by name: what serving.engine (`--engine`, phase 2) picks. Each is checked against the seam's
Engine protocol by the type checker (the assignments under TYPE_CHECKING), so an engine that drifts from the
seam fails `mypy`, not a night."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.engines.ray.engine import RayEngine
from tasks.engines.seam import Engine, EngineName
from tasks.engines.torchserve.engine import TorchServeEngine

if TYPE_CHECKING:
    from tasks.engines.ray.head import RayStarted
    from tasks.engines.torchserve.engine import TorchServeStarted

    _ray: Engine[RayStarted] = RayEngine()
    _torchserve: Engine[TorchServeStarted] = TorchServeEngine()


def engine_named(name: EngineName) -> Engine[Any]:
    """The engine called `name`. Ray's is importable without Ray installed; starting it says how to install it."""
    return RayEngine() if name == "ray" else TorchServeEngine()
