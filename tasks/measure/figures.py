"""figures: every benchmark figure -- its name, how it is read off a BenchmarkResult, its unit, which way is
better, its label -- and every way the figures are shown.

FIGURES is the one list. From it come: the benchmark table artifact (`table_rows`, one row per figure,
named by `Figure.name`), the flow log's headline (`headline`), the summary artifact's lines
(`markdown_lines`), the chart's title (`title`), and the figures tasks/measure/regression.py compares
and filters on (it imports the Figure objects, never their names).

A figure's `name` is the row name in the table artifacts of earlier nights, which the regression reads
back: renaming one cuts tonight off from its history. Rename a field of BenchmarkResult freely; keep
the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from tasks.measure.results import BenchmarkResult

Value = float | int | str | None


@dataclass(frozen=True)
class Figure:
    name: str  # the table artifact's row: stable from night to night
    read: Callable[[BenchmarkResult], Value]  # None: not measured in this run
    unit: str = ""
    higher_is_better: bool | None = None  # None: context for a reader, not a performance figure
    label: str = ""  # what a line of text calls it
    fmt: str = ".3g"

    def value(self, bench: BenchmarkResult) -> Value:
        return self.read(bench)

    def text(self, bench: BenchmarkResult, labelled: bool = True) -> str | None:
        """'p90 1070 ms'; None when not measured."""
        value = self.read(bench)
        if value is None:
            return None
        if isinstance(value, float) and math.isnan(value):
            return f"{self.label} n/a".strip()
        shown = value if isinstance(value, str) else format(value, self.fmt)
        shown += self.unit if self.unit == "x" else f" {self.unit}" if self.unit else ""
        return f"{self.label} {shown}" if labelled and self.label else shown


def _of(section: Callable[[BenchmarkResult], Any], read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    """Read off an optional part of the result (the ceiling, the server's times ...): None when absent."""

    def value(bench: BenchmarkResult) -> Value:
        part = section(bench)
        return None if part is None else read(part)

    return value


def _latency(prefix: str, section: Callable[[BenchmarkResult], Any], label: str) -> tuple[Figure, ...]:
    """p50, p90, p95, p99, mean, max of a LatencyMs."""
    return tuple(
        Figure(f"{prefix} {key}", _of(section, attrgetter(key)), "ms", False, f"{label}{key}", ".0f")
        for key in ("p50", "p90", "p95", "p99", "mean", "max")
    )


def _stat(prefix: str, section: Callable[[BenchmarkResult], Any], label: str) -> tuple[Figure, ...]:
    """count, p50, p90, p95, p99, mean, max of a Stat of TorchServe's times (ms) over the measured window."""
    count = Figure(f"{prefix} count", _of(section, lambda stat: stat.count), label=f"{label} count", fmt="d")
    return (
        count,
        *(
            Figure(f"{prefix} {key}", _of(section, attrgetter(key)), "ms", False, f"{label} {key}", ".0f")
            for key in ("p50", "p90", "p95", "p99", "mean", "max")
        ),
    )


def _ceiling(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.measured_ceiling, read)


def _client(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.client, read)


def _single(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.single_client, read)


def _server(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.server, read)


def _cpu(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.cpu, read)


def _open(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.open_loop, read)


def _windows(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.windows, read)


def _load(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.model_load, read)


def _memory(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.memory, read)


def _accelerator(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.accelerator, read)


def _capacity(read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    return _of(lambda b: b.capacity, read)


def _cpu_ratio(cpu) -> Value:
    worker, ceiling = cpu.worker_cpu_ms_per_request, cpu.ceiling_cpu_ms_per_inference
    return worker / ceiling if worker is not None and ceiling else None


# --- the load ---------------------------------------------------------------------------------------
REQUESTS_PER_S = Figure("requests_per_s", lambda b: b.requests_per_s, "requests/s", True, fmt=".1f")
INFERENCES_PER_S = Figure("inferences_per_s", lambda b: b.inferences_per_s, "inferences/s", True, fmt=".1f")
REQUESTS = Figure("requests", lambda b: b.requests, label="requests", fmt="d")
ERRORS = Figure("errors", lambda b: b.errors, higher_is_better=False, label="errors", fmt="d")
CONCURRENCY = Figure("concurrency", lambda b: b.concurrency, label="concurrency", fmt="d")
SECONDS = Figure("seconds", lambda b: b.seconds, "s", label="measured", fmt=".1f")
ERROR_RATE = Figure("error_rate", lambda b: b.error_rate, higher_is_better=False, label="error rate", fmt=".1%")
MODE = Figure("mode", lambda b: b.mode, "loop")
RATE = Figure("rate", lambda b: b.rate, "requests/s", label="asked for", fmt="g")
FIRST_ERROR = Figure("first_error", lambda b: b.first_error, label="first error")
PAIRS = Figure("pairs", lambda b: b.pairs, label="pairs")
SERVED_OVER_CEILING = Figure(
    "served_over_ceiling", lambda b: b.served_over_ceiling, "", True, "served / in-process", ".2f"
)
FINGERPRINT = Figure("fingerprint", lambda b: b.fingerprint, label="fingerprint")
COMPARISON_UNRELIABLE = Figure("served_over_ceiling unreliable", lambda b: b.comparison_unreliable, label="unreliable")
LATENCY_P50, LATENCY_P90, LATENCY_P95, LATENCY_P99, LATENCY_MEAN, LATENCY_MAX = _latency(
    "latency_ms", lambda b: b.latency_ms, ""
)
ACCURACY = Figure("accuracy", lambda b: b.accuracy, "", True, "accuracy", ".4f")

# --- open loop: asked for against what happened -------------------------------------------------------
OPEN_OFFERED = Figure(
    "open_loop offered_per_s", _open(lambda o: o.offered_per_s), "requests/s", label="offered", fmt="g"
)
OPEN_SENT = Figure("open_loop sent_per_s", _open(lambda o: o.sent_per_s), "requests/s", label="sent", fmt=".1f")
OPEN_ACHIEVED = Figure(
    "open_loop achieved_per_s", _open(lambda o: o.achieved_per_s), "requests/s", True, "achieved", ".1f"
)
OPEN_LATE = Figure("open_loop late", _open(lambda o: o.late), "requests", False, "late", "d")
OPEN_LATE_AFTER = Figure("open_loop late_after_ms", _open(lambda o: o.late_after_ms), "ms", label="late after", fmt="g")
OPEN_DROPPED = Figure("open_loop dropped", _open(lambda o: o.dropped), "requests", False, "dropped", "d")

# --- throughput per window: is the measurement stable? ----------------------------------------------------
WINDOW_SECONDS = Figure("windows seconds", _windows(lambda w: w.seconds), "s", label="window", fmt="g")
WINDOW_COUNT = Figure("windows count", _windows(lambda w: len(w.requests_per_s)), label="windows", fmt="d")
WINDOW_CV = Figure("windows cv", _windows(lambda w: w.cv), "", False, "throughput CV", ".3f")
WINDOW_STABLE = Figure("windows stable", _windows(lambda w: "stable" if w.stable else "UNSTABLE"))

# --- model load, per worker (the slowest), from TorchServe's log -----------------------------------------
LOAD_READY = Figure(
    "model_load register_to_ready_s", _load(lambda m: m.register_to_ready_s), "s", False, "load to READY", ".1f"
)
LOAD_WORKER = Figure(
    "model_load worker_load_ms", _load(lambda m: m.worker_load_ms), "ms", False, "worker's own load", ".0f"
)

# --- host memory: TorchServe's RSS during the load, peaks ---------------------------------------------------
MEMORY_FRONTEND = Figure(
    "memory frontend_rss_mib", _memory(lambda m: m.frontend_rss_mib), "MiB", False, "frontend", ".0f"
)
MEMORY_WORKERS = Figure("memory workers_rss_mib", _memory(lambda m: m.workers_rss_mib), "MiB", False, "workers", ".0f")
MEMORY_WORKER = Figure(
    "memory worker_rss_mib", _memory(lambda m: m.worker_rss_mib), "MiB", False, "largest worker", ".0f"
)
MEMORY_TOTAL = Figure("memory total_rss_mib", _memory(lambda m: m.total_rss_mib), "MiB", False, "TorchServe RSS", ".0f")

# --- the accelerator (or the workers' CPU) during the load ------------------------------------------------------
ACCEL_KIND = Figure("accelerator kind", _accelerator(lambda a: a.kind), label="from")
ACCEL_SOURCE = Figure("accelerator source", _accelerator(lambda a: a.source), label="source")
ACCEL_UTIL_MEAN = Figure(
    "accelerator utilization_pct_mean",
    _accelerator(lambda a: a.utilization_pct_mean),
    "%",
    True,
    "utilisation mean",
    ".1f",
)
ACCEL_UTIL_MAX = Figure(
    "accelerator utilization_pct_max", _accelerator(lambda a: a.utilization_pct_max), "%", label="max", fmt=".1f"
)
ACCEL_DEVICE_MEMORY = Figure(
    "accelerator device_memory_used_mib",
    _accelerator(lambda a: a.device_memory_used_mib),
    "MiB",
    False,
    "device memory peak",
    ".0f",
)
ACCEL_DEVICE_TOTAL = Figure(
    "accelerator device_memory_total_mib",
    _accelerator(lambda a: a.device_memory_total_mib),
    "MiB",
    label="of",
    fmt=".0f",
)

# --- the ceiling: the traced model in-process, no server --------------------------------------------
CEILING_BATCH_SIZE = Figure("ceiling batch_size", _ceiling(lambda c: c.batch_size), label="batch size", fmt="d")
CEILING_MAX_LENGTH = Figure("ceiling max_length", _ceiling(lambda c: c.max_length), label="max length", fmt="d")
CEILING_THREADS = Figure("ceiling threads", _ceiling(lambda c: c.threads), "threads", fmt="d")
CEILING_LAYOUT = Figure("ceiling best_layout", _ceiling(lambda c: c.best_layout), label="best layout")
CEILING_BATCHES_PER_S = Figure(
    "ceiling batches_per_s", _ceiling(lambda c: c.batches_per_s), "batches/s", True, fmt=".1f"
)
CEILING_INFERENCES_PER_S = Figure(
    "ceiling inferences_per_s", _ceiling(lambda c: c.inferences_per_s), "inferences/s", True, fmt=".1f"
)
CEILING_BATCH_MS = Figure(
    "ceiling batch_latency_ms", _ceiling(lambda c: c.batch_latency_ms), "ms", False, "one full batch", ".0f"
)
CEILING_LONE_BATCH_MS = Figure(
    "ceiling lone_batch_latency_ms",
    _ceiling(lambda c: c.lone_batch_latency_ms),
    "ms",
    False,
    "a lone request's batch",
    ".0f",
)
CEILING_WORKER_LONE_BATCH_MS = Figure(
    "ceiling worker_lone_batch_latency_ms",
    _ceiling(lambda c: c.worker_lone_batch_latency_ms),
    "ms",
    False,
    "the same at one worker's threads",
    ".0f",
)
CEILING_OTHER_CORES = Figure(
    "ceiling other_cores", _ceiling(lambda c: c.other_cores), "cores", False, "other work on the host meanwhile", ".2f"
)
CEILING_CV = Figure("ceiling cv", _ceiling(lambda c: c.cv), "", False, "CV over its windows", ".3f")

# --- the load generator alone, against a trivial local endpoint ----------------------------------------
CLIENT_REQUESTS_PER_S = Figure("client requests_per_s", _client(lambda c: c.requests_per_s), "requests/s", fmt=".0f")
CLIENT_CONCURRENCY = Figure("client concurrency", _client(lambda c: c.concurrency), label="concurrency", fmt="d")
CLIENT_SECONDS = Figure("client seconds", _client(lambda c: c.seconds), "s", label="measured", fmt=".1f")
CLIENT_LATENCY = _latency("client latency_ms", lambda b: b.client and b.client.latency_ms, "")
CLIENT_OVER_SERVED = Figure(
    "client over_served", _client(lambda c: c.over_served), "x", label="load generator / served", fmt=".0f"
)

# --- a lone client ------------------------------------------------------------------------------------
SINGLE_REQUESTS = Figure("single_client requests", _single(lambda s: s.requests), label="requests", fmt="d")
SINGLE_SECONDS = Figure("single_client seconds", _single(lambda s: s.seconds), "s", label="measured", fmt=".1f")
SINGLE_LATENCY = _latency(
    "single_client latency_ms", lambda b: b.single_client and b.single_client.latency_ms, "lone client "
)
SINGLE_P50 = SINGLE_LATENCY[0]
SINGLE_P90 = SINGLE_LATENCY[1]
SINGLE_OVER_BATCH = Figure(
    "single_client over_batch_latency",
    _single(lambda s: s.over_batch_latency),
    "x",
    False,
    "lone p50 / the same batch in-process",
    ".2f",
)
SINGLE_OVER_WORKER_BATCH = Figure(
    "single_client over_worker_batch_latency",
    _single(lambda s: s.over_worker_batch_latency),
    "x",
    False,
    "lone p50 / the same batch at one worker's threads",
    ".2f",
)

# --- TorchServe's own times ---------------------------------------------------------------------------
QUEUE = _stat("server queue_ms", lambda b: b.server and b.server.queue_ms, "queue")
REQUEST = _stat("server request_ms", lambda b: b.server and b.server.request_ms, "request")
HANDLER_METRIC = Figure("server handler_metric", _server(lambda s: s.handler_metric), label="handler time from")
HANDLER = _stat("server handler_ms", lambda b: b.server and b.server.handler_ms, "handler")
PREPROCESS = _stat("server preprocess_ms", lambda b: b.server and b.server.preprocess_ms, "preprocess")
MODEL = _stat("server model_ms", lambda b: b.server and b.server.model_ms, "model")
POSTPROCESS = _stat("server postprocess_ms", lambda b: b.server and b.server.postprocess_ms, "postprocess")
WORKER_THREAD = _stat(
    "server worker_thread_ms", lambda b: b.server and b.server.worker_thread_ms, "frontend around the worker"
)
BATCHES = Figure("server batches", _server(lambda s: s.batches), "batches", fmt="d")
BATCH_FILL = Figure("server mean_batch_fill", _server(lambda s: s.mean_batch_fill), "requests per batch", fmt=".1f")

# --- where the CPU went during the load ----------------------------------------------------------------
CPU_SECONDS = Figure("cpu seconds", _cpu(lambda c: c.seconds), "s", label="measured", fmt=".1f")
CPU_HOST_CORES = Figure("cpu host_cores", _cpu(lambda c: c.host_cores), "CPUs", label="host", fmt="d")
CPU_WORKERS_CORES = Figure("cpu workers_cores", _cpu(lambda c: c.workers_cores), "cores", label="workers", fmt=".2f")
CPU_FRONTEND_CORES = Figure(
    "cpu frontend_cores", _cpu(lambda c: c.frontend_cores), "cores", label="frontend", fmt=".2f"
)
CPU_CLIENT_CORES = Figure("cpu client_cores", _cpu(lambda c: c.client_cores), "cores", label="client", fmt=".2f")
CPU_OTHER_CORES = Figure(
    "cpu other_cores", _cpu(lambda c: c.other_cores), "cores", False, "other work on the host", ".2f"
)
CPU_WORKER_MS_PER_REQUEST = Figure(
    "cpu worker_cpu_ms_per_request",
    _cpu(lambda c: c.worker_cpu_ms_per_request),
    "CPU-ms",
    False,
    "workers per request",
    ".1f",
)
CPU_CEILING_MS_PER_INFERENCE = Figure(
    "cpu ceiling_cpu_ms_per_inference",
    _cpu(lambda c: c.ceiling_cpu_ms_per_inference),
    "CPU-ms",
    False,
    "in-process per inference",
    ".1f",
)

CPU_WORKER_OVER_CEILING = Figure("cpu worker_over_ceiling", _cpu(_cpu_ratio), "x", False, "workers / in-process", ".3f")

REGRESSION = Figure("regression", lambda b: b.regression.status if b.regression else None, label="regression")

CAPACITY_RATE = Figure("capacity rate", _capacity(lambda c: c.rate), "requests/s", True, "capacity", ".1f")
CAPACITY_FAILED = Figure(
    "capacity failed_rate", _capacity(lambda c: c.failed_rate), "requests/s", label="failed at", fmt=".1f"
)
CAPACITY_BOUND = Figure("capacity bound_ms", _capacity(lambda c: c.bound_ms), "ms", label="bound", fmt="g")
CAPACITY_PERCENTILE = Figure("capacity percentile", _capacity(lambda c: c.percentile), label="percentile", fmt="g")
CAPACITY_STEPS = Figure("capacity steps", _capacity(lambda c: len(c.steps)), label="steps", fmt="d")
CAPACITY_STOPPED = Figure("capacity stopped", _capacity(lambda c: c.stopped), label="search ended")

# MLPerf's inference scenarios, where a figure here answers the same question (so a reader can set them beside
# published numbers): SingleStream's p90 of one query at a time, Offline's throughput with all the work
# available at once (our closed loop), Server's Poisson rate within a tail-latency bound (the capacity).
MLPERF_SINGLE_STREAM = Figure("mlperf SingleStream", SINGLE_P90.read, "ms", False, "SingleStream p90", ".0f")
MLPERF_OFFLINE = Figure(
    "mlperf Offline",
    lambda b: b.inferences_per_s if b.mode == "closed" else None,
    "inferences/s",
    True,
    "Offline",
    ".1f",
)
MLPERF_SERVER = Figure("mlperf Server", CAPACITY_RATE.read, "requests/s", True, "Server", ".1f")

FIGURES: tuple[Figure, ...] = (
    REQUESTS_PER_S,
    INFERENCES_PER_S,
    REQUESTS,
    ERRORS,
    CONCURRENCY,
    SECONDS,
    ERROR_RATE,
    MODE,
    RATE,
    FIRST_ERROR,
    PAIRS,
    SERVED_OVER_CEILING,
    COMPARISON_UNRELIABLE,
    FINGERPRINT,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P95,
    LATENCY_P99,
    LATENCY_MEAN,
    LATENCY_MAX,
    ACCURACY,
    OPEN_OFFERED,
    OPEN_SENT,
    OPEN_ACHIEVED,
    OPEN_LATE,
    OPEN_LATE_AFTER,
    OPEN_DROPPED,
    WINDOW_SECONDS,
    WINDOW_COUNT,
    WINDOW_CV,
    WINDOW_STABLE,
    LOAD_READY,
    LOAD_WORKER,
    MEMORY_FRONTEND,
    MEMORY_WORKERS,
    MEMORY_WORKER,
    MEMORY_TOTAL,
    ACCEL_KIND,
    ACCEL_SOURCE,
    ACCEL_UTIL_MEAN,
    ACCEL_UTIL_MAX,
    ACCEL_DEVICE_MEMORY,
    ACCEL_DEVICE_TOTAL,
    CEILING_BATCH_SIZE,
    CEILING_MAX_LENGTH,
    CEILING_THREADS,
    CEILING_LAYOUT,
    CEILING_BATCHES_PER_S,
    CEILING_INFERENCES_PER_S,
    CEILING_BATCH_MS,
    CEILING_LONE_BATCH_MS,
    CEILING_WORKER_LONE_BATCH_MS,
    CEILING_OTHER_CORES,
    CEILING_CV,
    CLIENT_REQUESTS_PER_S,
    CLIENT_CONCURRENCY,
    CLIENT_SECONDS,
    *CLIENT_LATENCY,
    CLIENT_OVER_SERVED,
    SINGLE_REQUESTS,
    SINGLE_SECONDS,
    *SINGLE_LATENCY,
    SINGLE_OVER_BATCH,
    SINGLE_OVER_WORKER_BATCH,
    CAPACITY_RATE,
    CAPACITY_FAILED,
    CAPACITY_BOUND,
    CAPACITY_PERCENTILE,
    CAPACITY_STEPS,
    CAPACITY_STOPPED,
    *QUEUE,
    *REQUEST,
    HANDLER_METRIC,
    *HANDLER,
    *PREPROCESS,
    *MODEL,
    *POSTPROCESS,
    *WORKER_THREAD,
    BATCHES,
    BATCH_FILL,
    CPU_SECONDS,
    CPU_HOST_CORES,
    CPU_WORKERS_CORES,
    CPU_FRONTEND_CORES,
    CPU_CLIENT_CORES,
    CPU_OTHER_CORES,
    CPU_WORKER_MS_PER_REQUEST,
    CPU_CEILING_MS_PER_INFERENCE,
    CPU_WORKER_OVER_CEILING,
    REGRESSION,
)


# --- the ways they are shown ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of text: a title and figures, shown when at least one of them was measured."""

    title: str
    figures: tuple[Figure, ...]
    labelled: bool = True
    strong: bool = False

    def text(self, bench: BenchmarkResult) -> str | None:
        shown = [t for t in (f.text(bench, self.labelled) for f in self.figures) if t is not None]
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
        "TorchServe (queue per request; the handler and its phases per batch)",
        (
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


def _result(bench: BenchmarkResult | dict) -> BenchmarkResult:
    """summary.json's `benchmark` is the result's dump: read it back typed."""
    return bench if isinstance(bench, BenchmarkResult) else BenchmarkResult.model_validate(bench)


def values(bench: BenchmarkResult | dict) -> dict[str, Value]:
    """{figure name: value} of every measured figure: what the table artifact holds, unrounded."""
    bench = _result(bench)
    return {f.name: value for f in FIGURES if (value := f.value(bench)) is not None}


def table_rows(bench: BenchmarkResult | dict) -> list[dict]:
    """The benchmark table artifact: one row per measured figure (NaN as null), plus one per ceiling layout."""
    bench = _result(bench)
    rows = []
    for figure in FIGURES:
        value = figure.value(bench)
        if value is None:
            continue
        if isinstance(value, float):
            value = None if math.isnan(value) else round(value, 3)
        rows.append({"figure": figure.name, "value": value, "unit": figure.unit})
    for layout in bench.measured_ceiling.layouts if bench.measured_ceiling else []:
        rows.append(
            {
                "figure": f"ceiling layout {layout.name} inferences_per_s",
                "value": round(layout.inferences_per_s, 3),
                "unit": "inferences/s",
            }
        )
    return rows


def headline(bench: BenchmarkResult) -> str:
    """The flow log's one line on the benchmark."""
    return "benchmark: " + ", ".join(t for f in HEADLINE if (t := f.text(bench)) is not None)


def title(bench: BenchmarkResult) -> str:
    """benchmark.png's title."""
    return ", ".join(t for f in TITLE if (t := f.text(bench)) is not None)


def markdown_lines(bench: BenchmarkResult | dict) -> list[str]:
    """The summary artifact's benchmark section: the figures, the warnings, the regression verdict. (The
    summary embeds the pictures and names their files itself: a path on the worker's disk is no picture.)"""
    bench = _result(bench)
    lines = ["", SUMMARY.text(bench) or "", ""]
    lines += [f"- {text}" for line in DETAILS if (text := line.text(bench)) is not None]
    lines += [f"- **Warning**: {warning}" for warning in bench.warnings]
    if bench.server is not None and bench.server.note:
        lines.append(f"- TorchServe's times: {bench.server.note}")
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
