"""Where the CPU went during a load: TorchServe's workers and frontend, this process, other work on the host.

Take a snapshot before and after the load; cpu_use turns the two into cores (CPU-seconds per second).
"""

from __future__ import annotations

import time

import psutil

from tasks.measure.ceiling import Ceiling
from tasks.measure.results import CpuUse


def _role(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "org.pytorch.serve.ModelServer" in command or "java" in process.name():
        return "frontend"
    if "model_service_worker" in command:
        return "workers"
    return "launcher"


def server_processes(server) -> dict[int, psutil.Process]:
    """Every live process of a TorchServe: those it recorded and all their children, by pid."""
    found: dict[int, psutil.Process] = {}
    for ref in server.processes:
        process = ref.alive()
        if process is None:
            continue
        found[process.pid] = process
        try:
            found.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.Error:
            pass
    return found


def cpu_snapshot(server) -> dict[str, float]:
    """CPU-seconds so far: TorchServe's workers and frontend, this process, and the whole host."""
    found = server_processes(server)
    totals = {"workers": 0.0, "frontend": 0.0, "launcher": 0.0, "other": 0.0}
    for process in found.values():
        try:
            times = process.cpu_times()
            totals[_role(process)] += times.user + times.system
        except psutil.Error:
            pass
    mine = psutil.Process().cpu_times()
    host = psutil.cpu_times()
    totals["client"] = mine.user + mine.system
    totals["host_busy"] = sum(host) - host.idle - getattr(host, "iowait", 0.0)
    totals["wall"] = time.monotonic()
    return totals


def cpu_use(before: dict, after: dict, requests: int, ceiling: Ceiling | None) -> CpuUse:
    seconds = after["wall"] - before["wall"]
    used = {key: (after[key] - before[key]) / seconds if seconds > 0 else 0.0 for key in after if key != "wall"}
    ours = used["workers"] + used["frontend"] + used["launcher"] + used["client"]
    return CpuUse(
        seconds=seconds,
        host_cores=psutil.cpu_count() or 1,
        workers_cores=used["workers"],
        frontend_cores=used["frontend"] + used["launcher"],
        client_cores=used["client"],
        other_cores=max(0.0, used["host_busy"] - ours),
        worker_cpu_ms_per_request=(after["workers"] - before["workers"]) / requests * 1000 if requests else None,
        ceiling_cpu_ms_per_inference=ceiling.cpu_ms_per_inference if ceiling else None,
    )
