"""Host sizing: what `auto` turns into on this host -- the backend, and the TorchServe workers and their threads --
resolved once, before anything starts. Asking for more workers than the host holds is refused here, naming the
count and where it came from.
"""

from __future__ import annotations

from pydantic import BaseModel

from tasks.common import backends
from tasks.common.config import ConfigError, ServingConfig


class ResolvedServing(BaseModel):
    """What 'auto' turned into on this host, and where each number came from."""

    backend: str
    device_name: str
    cores: int
    cores_source: str
    initial_workers: int
    threads_per_worker: int
    versions: dict[str, str] = {}


def resolve_serving(serving: ServingConfig) -> ResolvedServing:
    """Pick the backend and size the workers to it, before anything starts.

    One worker per NeuronCore / GPU / physical core by default; asking for more is refused,
    naming the count and its source. CPU threads are split so workers don't oversubscribe.
    """
    try:
        accelerator = backends.detect(serving.backend, serving.instance_type)
    except backends.BackendError as error:
        raise ConfigError(f"serving.backend = {serving.backend!r}: {error.message}", fix=error.fix) from None
    cpus = backends.physical_cores()
    most = worker_limit(accelerator.backend, accelerator.cores, cpus)
    workers = most if serving.initial_workers == "auto" else serving.initial_workers
    if workers > most:
        unit = {"neuron": "NeuronCores", "cuda": "GPUs", "cpu": "physical CPU cores"}[accelerator.backend]
        why = (
            f"{accelerator.cores} {unit} (from {accelerator.cores_source}) and {cpus} physical CPU cores: "
            f"at most {most} workers, each with a CPU core of its own"
            if accelerator.backend == "cuda"
            else f"{accelerator.cores} {unit} (from {accelerator.cores_source}), and each worker needs one of its own"
        )
        raise ConfigError(
            f"serving.initial_workers = {workers}: this host has {why}",
            fix=f"set serving.initial_workers to {most} or fewer, or to auto",
        )
    return ResolvedServing(
        **accelerator.model_dump(),
        initial_workers=workers,
        threads_per_worker=max(1, cpus // workers),
    )


def worker_limit(backend: str, cores: int, cpus: int) -> int:
    """The most workers a host serves with, and the default (auto).

    neuron: one per NeuronCore (the runtime gives a core to one process). cpu: one per physical core.
    cuda: what the CPU cores per GPU allow -- several workers share a GPU (TorchServe hands gpu_id
    round-robin), so one worker's tokenization overlaps another's GPU work -- at least one per GPU."""
    if backend == "cuda":
        return cores * max(1, cpus // cores)
    return cores
