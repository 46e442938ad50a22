"""Where a running server's workers landed: one NeuronCore each (core_map), or which GPU each got (gpu_map),
read from TorchServe's management API, the workers' claims (serving/contract) and neuron-ls."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from serving.claims import core_claims, gpu_claims
from tasks.common.backends import neuron_ls
from tasks.serve.cores import CoresError, claims_dir
from tasks.serve.server import Server


class GpuMap(BaseModel):
    """cuda: which GPU each READY worker was given (TorchServe hands gpu_id round-robin)."""

    workers: dict[int, int]  # worker pid -> GPU index
    per_gpu: dict[int, int]  # GPU index -> workers on it


class CoreMap(BaseModel):
    """Which worker holds which NeuronCore, and what confirmed it."""

    cores: dict[int, int]  # core -> worker pid
    checked_with: list[str]


def ready_worker_pids(server: Server, model_name: str) -> list[int]:
    """The pids of the model's READY workers, as TorchServe's management API describes them."""
    with server.management() as client:
        answer = client.get(f"/models/{model_name}")
        answer.raise_for_status()
    return [int(w["pid"]) for w in answer.json()[0].get("workers", []) if w.get("status") == "READY" and w.get("pid")]


def core_map(server: Server, model_name: str, workers: int) -> CoreMap:
    """Every READY worker holds a NeuronCore of its own; fail naming the workers that do not."""
    return core_map_of(
        ready_worker_pids(server, model_name),
        claims_dir(server.server_dir),
        workers,
        fix="read the workers' log (server/logs/model_log.log): each says which core it took",
    )


def core_map_of(pids: list[int], claims: Path, wanted: int, fix: str, who: str = "workers") -> CoreMap:
    """Each of `pids` (a server's serving processes: TorchServe's workers, Ray Serve's replicas) holds a NeuronCore
    of its own, by its claim in `claims` and, where neuron-ls is there, by the runtime's own account."""
    claimed = {pid: core for core, pid in core_claims(claims).items()}
    cores = {claimed[pid]: pid for pid in pids if pid in claimed}
    problems = []
    if len(pids) != wanted:
        problems.append(f"{len(pids)} ready {who}, {wanted} wanted")
    if len(cores) != len(pids):
        problems.append(f"{who} without a core of their own: {sorted(set(pids) - set(cores.values()))}")
    checked = [f"{who.rstrip('s')} core claims"]
    listing = neuron_ls()
    if listing is not None:
        checked.append(listing.source)
        for core, pid in cores.items():
            if not any(p.pid == pid and core in p.cores for p in listing.processes):
                problems.append(
                    f"{listing.source} does not list {who.rstrip('s')} pid {pid} on the device of NeuronCore {core}"
                )
    if problems:
        raise CoresError(f"{who} are not one per NeuronCore: {'; '.join(problems)} (claims: {claimed})", fix=fix)
    return CoreMap(cores=dict(sorted(cores.items())), checked_with=checked)


def gpu_map(server: Server, model_name: str) -> GpuMap:
    """The GPU of every READY worker, as each recorded it (serving/claims.record_gpu): for the summary."""
    return gpu_map_of(ready_worker_pids(server, model_name), claims_dir(server.server_dir))


def gpu_map_of(pids: list[int], claims: Path) -> GpuMap:
    """The GPU each of `pids` recorded in `claims` (serving/claims.record_gpu)."""
    return gpu_map_from({pid: gpu for pid, gpu in gpu_claims(claims).items() if pid in pids})


def gpu_map_from(workers: dict[int, int]) -> GpuMap:
    """{pid: GPU} -> the map, with the count per GPU."""
    per_gpu: dict[int, int] = {}
    for gpu in workers.values():
        per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
    return GpuMap(workers=workers, per_gpu=dict(sorted(per_gpu.items())))
