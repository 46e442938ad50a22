"""Where the CPU went during a load: the server's workers (replicas) and the rest of it, this process, other work
on the host.

Take a snapshot before and after the load; cpu_use turns the two into cores (CPU-seconds per second).
"""

from __future__ import annotations

import time

import psutil

from tasks.measure.ceiling import Ceiling
from tasks.measure.results import CpuUse
from tasks.measure.served import FRONTEND, WORKERS


def cpu_snapshot(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU-seconds so far: the server's processes by role (ServedModel.processes: its workers or replicas, the
    rest of it), this process, and the whole host."""
    totals = {WORKERS: 0.0, FRONTEND: 0.0}
    for role, members in processes.items():
        for process in members:
            try:
                times = process.cpu_times()
                totals[role] = totals.get(role, 0.0) + times.user + times.system
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
    ours = used[WORKERS] + used[FRONTEND] + used["client"]
    return CpuUse(
        seconds=seconds,
        host_cores=psutil.cpu_count() or 1,
        workers_cores=used[WORKERS],
        frontend_cores=used[FRONTEND],
        client_cores=used["client"],
        other_cores=max(0.0, used["host_busy"] - ours),
        worker_cpu_ms_per_request=(after[WORKERS] - before[WORKERS]) / requests * 1000 if requests else None,
        ceiling_cpu_ms_per_inference=ceiling.cpu_ms_per_inference if ceiling else None,
    )
