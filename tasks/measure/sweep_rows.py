"""A sweep's rows (flows/sweep.py): each one serving setting and the benchmark stage's own result for it,
and how they are ranked.

A row is typed: its Setting (batch size, workers, threads per worker, max_batch_delay, concurrency) and
the BenchmarkResult that benchmark.measure_setting returned for it. `table_row` flattens it into what
sweep.json's `rows`, the sweep's table artifact, sweep.png (charts.sweep_chart) and the command's table
read. `rank` orders the rows within a p90 limit by a named ranking (RANKINGS) and marks the best.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from tasks.measure.results import BenchmarkResult


class Setting(BaseModel):
    """One point of the sweep's grid."""

    batch_size: int
    workers: int
    threads_per_worker: int
    max_batch_delay: int  # ms
    concurrency: int  # closed-loop clients

    @property
    def label(self) -> str:
        return f"b{self.batch_size} w{self.workers} d{self.max_batch_delay} c{self.concurrency}"


class SweepRow(BaseModel):
    """One setting and what the benchmark stage's measurement made of it; `rank` sets the two marks."""

    setting: Setting
    benchmark: BenchmarkResult
    within_limit: bool = False  # no errors, some throughput, p90 within the limit
    best: bool = False  # the first of the ranking

    @property
    def label(self) -> str:
        return self.setting.label

    def table_row(self) -> dict:
        """The row flat and rounded, its keys as sweep.json's `rows` have always had them."""
        bench, ceiling = self.benchmark, self.benchmark.measured_ceiling
        return {
            "label": self.label,
            **self.setting.model_dump(),
            **_load_figures(bench),
            **_ceiling_figures(bench),
            **_server_figures(bench),
            # CPU other work on the host used meanwhile (> 0.1 x CPUs: the row is not reliable)
            "other_cores": _round(bench.cpu.other_cores if bench.cpu else None, 2),
            "other_cores_ceiling": _round(ceiling.other_cores if ceiling else None, 2),
            "capacity_per_s": _round(self.capacity, 2),
            "within_limit": self.within_limit,
            "best": self.best,
        }

    @property
    def capacity(self) -> float | None:
        """The highest Poisson rate within the capacity bound (None: no search, or no rate met it)."""
        return self.benchmark.capacity.rate if self.benchmark.capacity else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _load_figures(bench: BenchmarkResult) -> dict:
    lat = bench.latency_ms
    return {
        "requests_per_s": round(bench.requests_per_s, 2),
        "inferences_per_s": round(bench.inferences_per_s, 2),
        "p50_ms": round(lat.p50, 1),
        "p90_ms": round(lat.p90, 1),
        "p99_ms": round(lat.p99, 1),
        "max_ms": round(lat.max, 1),
        "mean_ms": round(lat.mean, 1),
        "errors": bench.errors,
        "error_rate": round(bench.error_rate, 4),
    }


def _ceiling_figures(bench: BenchmarkResult) -> dict:
    ceiling = bench.measured_ceiling
    return {
        "ceiling_inferences_per_s": _round(ceiling.inferences_per_s if ceiling else None, 2),
        "served_over_ceiling": _round(bench.served_over_ceiling, 3),
        "lone_batch_ms": _round(ceiling.lone_batch_latency_ms if ceiling else None, 1),
        "worker_lone_batch_ms": _round(ceiling.worker_lone_batch_latency_ms if ceiling else None, 1),
    }


def _server_figures(bench: BenchmarkResult) -> dict:
    server = bench.server
    return {
        "queue_ms_p50": _round(server.queue_ms.p50 if server and server.queue_ms else None, 1),
        "handler_ms_p50": _round(server.handler_ms.p50 if server and server.handler_ms else None, 1),
        "mean_batch_fill": _round(server.mean_batch_fill if server and server.mean_batch_fill else None, 2),
    }


# --- the ranking --------------------------------------------------------------------------------------

# name -> the key a row is ranked by, highest first
RANKINGS: dict[str, Callable[[SweepRow], tuple]] = {
    # most inferences/s; of equals, the lower p90
    "throughput": lambda row: (row.benchmark.inferences_per_s, -row.benchmark.latency_ms.p90),
    # the highest rate of Poisson arrivals within the latency bound (MLPerf's Server); of equals, the faster
    "capacity": lambda row: (row.capacity or 0.0, row.benchmark.inferences_per_s),
}


def within_limit(row: SweepRow, p90_limit_ms: float | None, by: str = "throughput") -> bool:
    """No errors, some throughput, and p90 within the limit (None: no limit); ranked by capacity, a rate
    that met the capacity's own bound instead."""
    bench = row.benchmark
    if bench.errors or bench.inferences_per_s <= 0:
        return False
    if by == "capacity":
        return row.capacity is not None
    return p90_limit_ms is None or bench.latency_ms.p90 <= p90_limit_ms


def rank(rows: list[SweepRow], p90_limit_ms: float | None = None, by: str = "throughput") -> list[SweepRow]:
    """The rows within the limit, best first by the ranking `by` names (RANKINGS); marks every row's
    within_limit and the first's best. Empty when no row qualifies."""
    key = RANKINGS[by]
    for row in rows:
        row.within_limit, row.best = within_limit(row, p90_limit_ms, by), False
    ranked = sorted((row for row in rows if row.within_limit), key=key, reverse=True)
    if ranked:
        ranked[0].best = True
    return ranked


def verdict(best: SweepRow | None, p90_limit_ms: float | None, by: str = "throughput") -> str:
    """The sweep's one line: the best setting and its figures, or that none qualified."""
    if best is None:
        return "no configuration met the limit without errors"
    if by == "capacity" and best.benchmark.capacity is not None:
        capacity = best.benchmark.capacity
        return (
            f"best by capacity at p{capacity.percentile:g} <= {capacity.bound_ms:g} ms: {best.label} "
            f"({capacity.rate:.1f} requests/s; {best.benchmark.inferences_per_s:.1f} inferences/s closed loop)"
        )
    figures = (
        f"{best.label} ({best.benchmark.inferences_per_s:.1f} inferences/s, p90 {best.benchmark.latency_ms.p90:.0f} ms)"
    )
    return f"best within p90 <= {p90_limit_ms:g} ms: {figures}" if p90_limit_ms is not None else f"best: {figures}"
