"""The benchmark figures in words (the catalogue is tasks/measure/figures.py): the flow log's headline (`headline`),
the summary artifact's benchmark section (`markdown_lines`, with the capacity search's and the regression's
tables), and benchmark.png's title (`title`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tasks.measure.figures import (
    ACCEL_DEVICE_MEMORY,
    ACCEL_DEVICE_TOTAL,
    ACCEL_KIND,
    ACCEL_UTIL_MAX,
    ACCEL_UTIL_MEAN,
    ACCURACY,
    BATCH_FILL,
    BATCH_WAIT,
    CAPACITY_BOUND,
    CAPACITY_FAILED,
    CAPACITY_PERCENTILE,
    CAPACITY_RATE,
    CAPACITY_STEPS,
    CAPACITY_STOPPED,
    CEILING_BATCH_MS,
    CEILING_CV,
    CEILING_INFERENCES_PER_S,
    CEILING_LAYOUT,
    CEILING_LONE_BATCH_MS,
    CEILING_THREADS,
    CEILING_WORKER_LONE_BATCH_MS,
    CLIENT_OVER_SERVED,
    CLIENT_REQUESTS_PER_S,
    COMPARISON_UNRELIABLE,
    CONCURRENCY,
    CPU_CEILING_MS_PER_INFERENCE,
    CPU_CLIENT_CORES,
    CPU_FRONTEND_CORES,
    CPU_HOST_CORES,
    CPU_OTHER_CORES,
    CPU_WORKER_MS_PER_REQUEST,
    CPU_WORKER_OVER_CEILING,
    CPU_WORKERS_CORES,
    ENGINE,
    ERROR_RATE,
    ERRORS,
    HANDLER,
    HANDLER_METRIC,
    INFERENCES_PER_S,
    LATENCY_MAX,
    LATENCY_MEAN,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P95,
    LATENCY_P99,
    LOAD_READY,
    LOAD_WORKER,
    MEMORY_FRONTEND,
    MEMORY_TOTAL,
    MEMORY_WORKER,
    MEMORY_WORKERS,
    MLPERF_OFFLINE,
    MLPERF_SERVER,
    MLPERF_SINGLE_STREAM,
    MODE,
    MODEL,
    OPEN_ACHIEVED,
    OPEN_DROPPED,
    OPEN_LATE,
    OPEN_OFFERED,
    OPEN_SENT,
    POSTPROCESS,
    PREPROCESS,
    QUEUE,
    REPLICA,
    SERVED_OVER_CEILING,
    SINGLE_OVER_BATCH,
    SINGLE_OVER_WORKER_BATCH,
    SINGLE_P50,
    WINDOW_COUNT,
    WINDOW_CV,
    WINDOW_SECONDS,
    WINDOW_STABLE,
    Figure,
)
from tasks.measure.results import BenchmarkResult


def words(figure: Figure, bench: BenchmarkResult, labelled: bool = True) -> str | None:
    """'p90 1070 ms'; None when not measured."""
    value = figure.read(bench)
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return f"{figure.label} n/a".strip()
    shown = value if isinstance(value, str) else format(value, figure.fmt)
    shown += figure.unit if figure.unit == "x" else f" {figure.unit}" if figure.unit else ""
    return f"{figure.label} {shown}" if labelled and figure.label else shown


@dataclass(frozen=True)
class Line:
    """One line of text: a title and figures, shown when at least one of them was measured."""

    title: str
    figures: tuple[Figure, ...]
    labelled: bool = True
    strong: bool = False

    def text(self, bench: BenchmarkResult) -> str | None:
        shown = [t for t in (words(f, bench, self.labelled) for f in self.figures) if t is not None]
        if not shown:
            return None
        text = f"{self.title}: {', '.join(shown)}"
        return f"**{text}**" if self.strong else text


HEADLINE = (
    INFERENCES_PER_S,
    MODE,
    CONCURRENCY,
    OPEN_OFFERED,
    OPEN_ACHIEVED,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P95,
    LATENCY_P99,
    LATENCY_MAX,
    ERRORS,
    ERROR_RATE,
    OPEN_LATE,
    OPEN_DROPPED,
    WINDOW_CV,
    SERVED_OVER_CEILING,
    CLIENT_OVER_SERVED,
    SINGLE_P50,
    SINGLE_OVER_BATCH,
    SINGLE_OVER_WORKER_BATCH,
    QUEUE[1],
    HANDLER[1],
    MODEL[1],
    BATCH_FILL,
    CPU_WORKERS_CORES,
    CPU_FRONTEND_CORES,
    CPU_CLIENT_CORES,
    CPU_OTHER_CORES,
    CPU_WORKER_MS_PER_REQUEST,
    CPU_CEILING_MS_PER_INFERENCE,
    MEMORY_TOTAL,
    LOAD_READY,
    CAPACITY_RATE,
    CAPACITY_BOUND,
)
TITLE = (INFERENCES_PER_S, MODE, CONCURRENCY, LATENCY_P50, LATENCY_P90, SERVED_OVER_CEILING)
SUMMARY = Line("Benchmark", (INFERENCES_PER_S, MODE, CONCURRENCY, LATENCY_P50, LATENCY_P90, LATENCY_P99, ERRORS))
DETAILS = (
    Line("MLPerf's scenarios, as measured here", (MLPERF_SINGLE_STREAM, MLPERF_OFFLINE, MLPERF_SERVER), strong=True),
    Line("Served / in-process", (SERVED_OVER_CEILING, COMPARISON_UNRELIABLE), labelled=False, strong=True),
    Line(
        "Latency (client)", (LATENCY_P50, LATENCY_P90, LATENCY_P95, LATENCY_P99, LATENCY_MAX, LATENCY_MEAN, ERROR_RATE)
    ),
    Line(
        "Open loop (latency from the intended send)", (OPEN_OFFERED, OPEN_SENT, OPEN_ACHIEVED, OPEN_LATE, OPEN_DROPPED)
    ),
    Line("Throughput per window", (WINDOW_SECONDS, WINDOW_COUNT, WINDOW_CV, WINDOW_STABLE)),
    Line(
        "Worker CPU per request vs in-process per inference",
        (CPU_WORKER_MS_PER_REQUEST, CPU_CEILING_MS_PER_INFERENCE, CPU_WORKER_OVER_CEILING),
        strong=True,
    ),
    Line(
        "Ceiling (the traced model in-process, no server)",
        (
            CEILING_INFERENCES_PER_S,
            CEILING_CV,
            CEILING_THREADS,
            CEILING_LAYOUT,
            CEILING_BATCH_MS,
            CEILING_LONE_BATCH_MS,
            CEILING_WORKER_LONE_BATCH_MS,
        ),
    ),
    Line(
        "Load generator alone (trivial local endpoint; far above 1x: the client was not the limit)",
        (CLIENT_REQUESTS_PER_S, CLIENT_OVER_SERVED),
    ),
    Line("Lone client (concurrency 1)", (SINGLE_P50, SINGLE_OVER_BATCH, SINGLE_OVER_WORKER_BATCH)),
    Line(
        "Capacity (Poisson arrivals; the highest offered rate within the bound)",
        (CAPACITY_RATE, CAPACITY_PERCENTILE, CAPACITY_BOUND, CAPACITY_FAILED, CAPACITY_STEPS, CAPACITY_STOPPED),
    ),
    Line(
        "The engine's own account (TorchServe: queue per request, the handler and its phases per batch; Ray Serve: "
        "the router's queue, the replica per request, the batch wait and the handler per batch)",
        (
            ENGINE,
            QUEUE[1],
            QUEUE[2],
            QUEUE[4],
            HANDLER_METRIC,
            HANDLER[1],
            HANDLER[2],
            HANDLER[4],
            PREPROCESS[1],
            PREPROCESS[2],
            MODEL[1],
            MODEL[2],
            MODEL[4],
            POSTPROCESS[1],
            POSTPROCESS[2],
            REPLICA[1],
            REPLICA[2],
            BATCH_WAIT[1],
            BATCH_FILL,
        ),
    ),
    Line("Model load (slowest worker)", (LOAD_READY, LOAD_WORKER)),
    Line("Memory (RSS peak during the load)", (MEMORY_FRONTEND, MEMORY_WORKERS, MEMORY_WORKER, MEMORY_TOTAL)),
    Line(
        "Accelerator during the load",
        (ACCEL_KIND, ACCEL_UTIL_MEAN, ACCEL_UTIL_MAX, ACCEL_DEVICE_MEMORY, ACCEL_DEVICE_TOTAL),
    ),
    Line("Accuracy (the check stage's accuracy file)", (ACCURACY,)),
    Line(
        "CPU during the load",
        (
            CPU_HOST_CORES,
            CPU_WORKERS_CORES,
            CPU_FRONTEND_CORES,
            CPU_CLIENT_CORES,
            CPU_OTHER_CORES,
            CPU_WORKER_MS_PER_REQUEST,
            CPU_CEILING_MS_PER_INFERENCE,
        ),
    ),
)


def headline(bench: BenchmarkResult) -> str:
    """The flow log's one line on the benchmark."""
    return "benchmark: " + ", ".join(t for f in HEADLINE if (t := words(f, bench)) is not None)


def title(bench: BenchmarkResult) -> str:
    """benchmark.png's title."""
    return ", ".join(t for f in TITLE if (t := words(f, bench)) is not None)


def markdown_lines(bench: BenchmarkResult) -> list[str]:
    """The summary artifact's benchmark section: the figures, the warnings, the regression verdict. (The
    summary embeds the pictures and names their files itself: a path on the worker's disk is no picture.)"""
    lines = ["", SUMMARY.text(bench) or "", ""]
    lines += [f"- {text}" for line in DETAILS if (text := line.text(bench)) is not None]
    lines += [f"- **Warning**: {warning}" for warning in bench.warnings]
    if bench.server is not None and bench.server.note:
        lines.append(f"- {bench.engine or 'the server'}'s times: {bench.server.note}")
    lines += capacity_table(bench.capacity)
    if bench.regression is not None:
        lines.append(f"- Regression check: **{bench.regression.status}** — {bench.regression.message}")
        lines += regression_table(bench.regression)
    return lines


def capacity_table(capacity) -> list[str]:
    """The capacity search's steps, in the order they ran: one markdown row each."""
    if capacity is None or not capacity.steps:
        return []
    lines = [
        "",
        f"Capacity search ({capacity.rule}):",
        "",
        f"| offered requests/s | answered requests/s | p50 ms | p90 ms | p99 ms | errors | dropped | "
        f"p{capacity.percentile:g} within {capacity.bound_ms:g} ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in capacity.steps:
        lines.append(
            f"| {step.rate:.1f} | {step.achieved:.1f} | {step.p50:.0f} | {step.p90:.0f} | {step.p99:.0f} | "
            f"{step.errors} | {step.dropped} | {'**passed**' if step.passed else 'failed'} |"
        )
    return lines


def regression_table(verdict) -> list[str]:
    """What moved against earlier nights: one markdown row per compared figure."""
    if not verdict.table:
        return []
    lines = ["", "| figure | tonight | median of earlier nights | change | allowed | |", "|---|---|---|---|---|---|"]
    for row in verdict.table:
        change = f"{row.relative:+.1%}" if row.relative is not None and not row.absolute else f"{row.change:+.4g}"
        allowed = f"{row.allowed:.4g} {row.unit}".strip()
        lines.append(
            f"| {row.figure} | {row.current:.4g} | {row.baseline:.4g} | {change} | {allowed} | "
            f"{'**regressed**' if row.regressed else 'ok'} |"
        )
    return lines
