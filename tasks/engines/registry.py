"""The engines by name: what serving.engine (`--engine`) and serving.engines (`--engines`) pick. Each is checked
against the seam's Engine protocol by the type checker (the assignments under TYPE_CHECKING), so an engine that
drifts from the seam fails `mypy`, not a night."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.common.config import RunConfig
from tasks.common.runlog import Log
from tasks.engines.ray.engine import RayEngine
from tasks.engines.seam import ENGINES, Engine, EngineError, EngineName
from tasks.engines.served import Served
from tasks.engines.torchserve.engine import TorchServeEngine
from tasks.engines.torchserve.engine import compare_buckets as torchserve_buckets
from tasks.measure.buckets import BucketComparison
from tasks.prepare.trace import TracedModel
from tasks.serve import cores

if TYPE_CHECKING:
    from tasks.engines.ray.head import RayStarted
    from tasks.engines.torchserve.engine import TorchServeStarted

    _ray: Engine[RayStarted] = RayEngine()
    _torchserve: Engine[TorchServeStarted] = TorchServeEngine()


def engine_named(name: EngineName) -> Engine[Any]:
    """The engine called `name`. Ray's is importable without Ray installed; starting it says how to install it."""
    return RayEngine() if name == "ray" else TorchServeEngine()


def stop_stale(runs_dir: Path) -> list[str]:
    """What crashed runs left serving under runs_dir, of every engine, stopped: a line per server for the log. Ray's
    sweep needs no Ray installed (it finds processes by their record and marker)."""
    return [line for name in ENGINES for line in engine_named(name).stop_stale(runs_dir)]


def free_for_tonight(runs_dir: Path, backend: str, workers: int) -> list[str]:
    """Before tonight's work, in its first stage: what crashed nights left serving, of any engine, stopped -- on
    Neuron their workers or replicas still hold the NeuronCores tonight's compile child needs -- and on Neuron
    `workers` cores waited for (a process not ours that holds one is named, before any work)."""
    stopped = stop_stale(runs_dir)
    if backend == "neuron":
        cores.ensure_free(workers)
    return stopped


# compare-buckets serves the same graphs a second time, narrowed to max_length, beside the first: TorchServe's
# management API registers a second model; the Ray engine deploys one application per night.
COMPARES_BUCKETS: dict[EngineName, str | None] = {
    "torchserve": None,
    "ray": "TorchServe only (it registers a max_length-only copy through TorchServe's management API)",
}


def compare_buckets(
    served: Served, traced: TracedModel, config: RunConfig, workers: int, log: Log | None = None
) -> BucketComparison:
    """The compare-buckets stage on an engine that can (COMPARES_BUCKETS)."""
    if served.engine.name != "torchserve":
        raise EngineError(f"compare-buckets: {COMPARES_BUCKETS[served.engine.name]}", fix="skip it on this engine")
    return torchserve_buckets(served, traced, config, workers, log)
