"""figures: the catalogue of every benchmark figure -- its name, how it is read off a BenchmarkResult, its unit,
which way is better, its label.

FIGURES is the one list. From it come: the benchmark table artifact (`table_rows`, one row per figure,
named by `Figure.name`), the figures tasks/measure/regression.py compares and filters on (it imports the Figure
objects, never their names), and every way they are shown in words (tasks/measure/figure_text.py: the flow log's
headline, the summary artifact's lines, the chart's title).

A figure's `name` is the row name in the table artifacts of earlier nights, which the regression reads
back: renaming one cuts tonight off from its history. Rename a field of BenchmarkResult freely; keep
the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from operator import attrgetter
from typing import Any

from tasks.measure.results import BenchmarkResult

Value = float | int | str | None


@dataclass(frozen=True)
class Figure:
    name: str  # the table artifact's row: stable from night to night
    read: Callable[[BenchmarkResult], Value]  # None: not measured in this run
    _: KW_ONLY
    unit: str = ""
    higher_is_better: bool | None = None  # None: context for a reader, not a performance figure
    label: str = ""  # what a line of text calls it
    fmt: str = ".3g"


def _of(section: Callable[[BenchmarkResult], Any], read: Callable[[Any], Value]) -> Callable[[BenchmarkResult], Value]:
    """Read off an optional part of the result (the ceiling, the server's times ...): None when absent."""

    def value(bench: BenchmarkResult) -> Value:
        part = section(bench)
        return None if part is None else read(part)

    return value


def _latency(prefix: str, section: Callable[[BenchmarkResult], Any], label: str) -> tuple[Figure, ...]:
    """p50, p90, p95, p99, mean, max of a LatencyMs."""
    return tuple(
        Figure(
            f"{prefix} {key}",
            _of(section, attrgetter(key)),
            unit="ms",
            higher_is_better=False,
            label=f"{label}{key}",
            fmt=".0f",
        )
        for key in ("p50", "p90", "p95", "p99", "mean", "max")
    )


def _stat(prefix: str, section: Callable[[BenchmarkResult], Any], label: str) -> tuple[Figure, ...]:
    """count, p50, p90, p95, p99, mean, max of a Stat of the engine's own times (ms) over the measured window."""
    count = Figure(f"{prefix} count", _of(section, lambda stat: stat.count), label=f"{label} count", fmt="d")
    return (
        count,
        *(
            Figure(
                f"{prefix} {key}",
                _of(section, attrgetter(key)),
                unit="ms",
                higher_is_better=False,
                label=f"{label} {key}",
                fmt=".0f",
            )
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
REQUESTS_PER_S = Figure(
    "requests_per_s", lambda b: b.requests_per_s, unit="requests/s", higher_is_better=True, fmt=".1f"
)
INFERENCES_PER_S = Figure(
    "inferences_per_s", lambda b: b.inferences_per_s, unit="inferences/s", higher_is_better=True, fmt=".1f"
)
REQUESTS = Figure("requests", lambda b: b.requests, label="requests", fmt="d")
ERRORS = Figure("errors", lambda b: b.errors, higher_is_better=False, label="errors", fmt="d")
CONCURRENCY = Figure("concurrency", lambda b: b.concurrency, label="concurrency", fmt="d")
SECONDS = Figure("seconds", lambda b: b.seconds, unit="s", label="measured", fmt=".1f")
ERROR_RATE = Figure("error_rate", lambda b: b.error_rate, higher_is_better=False, label="error rate", fmt=".1%")
MODE = Figure("mode", lambda b: b.mode, unit="loop")
RATE = Figure("rate", lambda b: b.rate, unit="requests/s", label="asked for", fmt="g")
FIRST_ERROR = Figure("first_error", lambda b: b.first_error, label="first error")
PAIRS = Figure("pairs", lambda b: b.pairs, label="pairs")
SERVED_OVER_CEILING = Figure(
    "served_over_ceiling",
    lambda b: b.served_over_ceiling,
    unit="",
    higher_is_better=True,
    label="served / in-process",
    fmt=".2f",
)
FINGERPRINT = Figure("fingerprint", lambda b: b.fingerprint, label="fingerprint")
ENGINE = Figure("engine", lambda b: b.engine, label="engine")
COMPARISON_UNRELIABLE = Figure("served_over_ceiling unreliable", lambda b: b.comparison_unreliable, label="unreliable")
LATENCY_P50, LATENCY_P90, LATENCY_P95, LATENCY_P99, LATENCY_MEAN, LATENCY_MAX = _latency(
    "latency_ms", lambda b: b.latency_ms, ""
)
ACCURACY = Figure("accuracy", lambda b: b.accuracy, unit="", higher_is_better=True, label="accuracy", fmt=".4f")

# --- open loop: asked for against what happened -------------------------------------------------------
OPEN_OFFERED = Figure(
    "open_loop offered_per_s", _open(lambda o: o.offered_per_s), unit="requests/s", label="offered", fmt="g"
)
OPEN_SENT = Figure("open_loop sent_per_s", _open(lambda o: o.sent_per_s), unit="requests/s", label="sent", fmt=".1f")
OPEN_ACHIEVED = Figure(
    "open_loop achieved_per_s",
    _open(lambda o: o.achieved_per_s),
    unit="requests/s",
    higher_is_better=True,
    label="achieved",
    fmt=".1f",
)
OPEN_LATE = Figure(
    "open_loop late", _open(lambda o: o.late), unit="requests", higher_is_better=False, label="late", fmt="d"
)
OPEN_LATE_AFTER = Figure(
    "open_loop late_after_ms", _open(lambda o: o.late_after_ms), unit="ms", label="late after", fmt="g"
)
OPEN_DROPPED = Figure(
    "open_loop dropped", _open(lambda o: o.dropped), unit="requests", higher_is_better=False, label="dropped", fmt="d"
)

# --- throughput per window: is the measurement stable? ----------------------------------------------------
WINDOW_SECONDS = Figure("windows seconds", _windows(lambda w: w.seconds), unit="s", label="window", fmt="g")
WINDOW_COUNT = Figure("windows count", _windows(lambda w: len(w.requests_per_s)), label="windows", fmt="d")
WINDOW_CV = Figure(
    "windows cv", _windows(lambda w: w.cv), unit="", higher_is_better=False, label="throughput CV", fmt=".3f"
)
WINDOW_STABLE = Figure("windows stable", _windows(lambda w: "stable" if w.stable else "UNSTABLE"))

# --- model load, per worker or replica (the slowest), as the engine tells it ----------------------------------
LOAD_READY = Figure(
    "model_load register_to_ready_s",
    _load(lambda m: m.register_to_ready_s),
    unit="s",
    higher_is_better=False,
    label="load to READY",
    fmt=".1f",
)
LOAD_WORKER = Figure(
    "model_load worker_load_ms",
    _load(lambda m: m.worker_load_ms),
    unit="ms",
    higher_is_better=False,
    label="worker's own load",
    fmt=".0f",
)

# --- host memory: the server's RSS during the load, peaks -----------------------------------------------
MEMORY_FRONTEND = Figure(
    "memory frontend_rss_mib",
    _memory(lambda m: m.frontend_rss_mib),
    unit="MiB",
    higher_is_better=False,
    label="frontend",
    fmt=".0f",
)
MEMORY_WORKERS = Figure(
    "memory workers_rss_mib",
    _memory(lambda m: m.workers_rss_mib),
    unit="MiB",
    higher_is_better=False,
    label="workers",
    fmt=".0f",
)
MEMORY_WORKER = Figure(
    "memory worker_rss_mib",
    _memory(lambda m: m.worker_rss_mib),
    unit="MiB",
    higher_is_better=False,
    label="largest worker",
    fmt=".0f",
)
MEMORY_TOTAL = Figure(
    "memory total_rss_mib",
    _memory(lambda m: m.total_rss_mib),
    unit="MiB",
    higher_is_better=False,
    label="server RSS",
    fmt=".0f",
)

# --- the accelerator (or the workers' CPU) during the load ------------------------------------------------------
ACCEL_KIND = Figure("accelerator kind", _accelerator(lambda a: a.kind), label="from")
ACCEL_SOURCE = Figure("accelerator source", _accelerator(lambda a: a.source), label="source")
ACCEL_UTIL_MEAN = Figure(
    "accelerator utilization_pct_mean",
    _accelerator(lambda a: a.utilization_pct_mean),
    unit="%",
    higher_is_better=True,
    label="utilisation mean",
    fmt=".1f",
)
ACCEL_UTIL_MAX = Figure(
    "accelerator utilization_pct_max", _accelerator(lambda a: a.utilization_pct_max), unit="%", label="max", fmt=".1f"
)
ACCEL_DEVICE_MEMORY = Figure(
    "accelerator device_memory_used_mib",
    _accelerator(lambda a: a.device_memory_used_mib),
    unit="MiB",
    higher_is_better=False,
    label="device memory peak",
    fmt=".0f",
)
ACCEL_DEVICE_TOTAL = Figure(
    "accelerator device_memory_total_mib",
    _accelerator(lambda a: a.device_memory_total_mib),
    unit="MiB",
    label="of",
    fmt=".0f",
)

# --- the ceiling: the traced model in-process, no server --------------------------------------------
CEILING_BATCH_SIZE = Figure("ceiling batch_size", _ceiling(lambda c: c.batch_size), label="batch size", fmt="d")
CEILING_MAX_LENGTH = Figure("ceiling max_length", _ceiling(lambda c: c.max_length), label="max length", fmt="d")
CEILING_THREADS = Figure("ceiling threads", _ceiling(lambda c: c.threads), unit="threads", fmt="d")
CEILING_LAYOUT = Figure("ceiling best_layout", _ceiling(lambda c: c.best_layout), label="best layout")
CEILING_BATCHES_PER_S = Figure(
    "ceiling batches_per_s", _ceiling(lambda c: c.batches_per_s), unit="batches/s", higher_is_better=True, fmt=".1f"
)
CEILING_INFERENCES_PER_S = Figure(
    "ceiling inferences_per_s",
    _ceiling(lambda c: c.inferences_per_s),
    unit="inferences/s",
    higher_is_better=True,
    fmt=".1f",
)
CEILING_BATCH_MS = Figure(
    "ceiling batch_latency_ms",
    _ceiling(lambda c: c.batch_latency_ms),
    unit="ms",
    higher_is_better=False,
    label="one full batch",
    fmt=".0f",
)
CEILING_LONE_BATCH_MS = Figure(
    "ceiling lone_batch_latency_ms",
    _ceiling(lambda c: c.lone_batch_latency_ms),
    unit="ms",
    higher_is_better=False,
    label="a lone request's batch",
    fmt=".0f",
)
CEILING_WORKER_LONE_BATCH_MS = Figure(
    "ceiling worker_lone_batch_latency_ms",
    _ceiling(lambda c: c.worker_lone_batch_latency_ms),
    unit="ms",
    higher_is_better=False,
    label="the same at one worker's threads",
    fmt=".0f",
)
CEILING_OTHER_CORES = Figure(
    "ceiling other_cores",
    _ceiling(lambda c: c.other_cores),
    unit="cores",
    higher_is_better=False,
    label="other work on the host meanwhile",
    fmt=".2f",
)
CEILING_CV = Figure(
    "ceiling cv", _ceiling(lambda c: c.cv), unit="", higher_is_better=False, label="CV over its windows", fmt=".3f"
)

# --- the load generator alone, against a trivial local endpoint ----------------------------------------
CLIENT_REQUESTS_PER_S = Figure(
    "client requests_per_s", _client(lambda c: c.requests_per_s), unit="requests/s", fmt=".0f"
)
CLIENT_CONCURRENCY = Figure("client concurrency", _client(lambda c: c.concurrency), label="concurrency", fmt="d")
CLIENT_SECONDS = Figure("client seconds", _client(lambda c: c.seconds), unit="s", label="measured", fmt=".1f")
CLIENT_LATENCY = _latency("client latency_ms", lambda b: b.client and b.client.latency_ms, "")
CLIENT_OVER_SERVED = Figure(
    "client over_served", _client(lambda c: c.over_served), unit="x", label="load generator / served", fmt=".0f"
)

# --- a lone client ------------------------------------------------------------------------------------
SINGLE_REQUESTS = Figure("single_client requests", _single(lambda s: s.requests), label="requests", fmt="d")
SINGLE_SECONDS = Figure("single_client seconds", _single(lambda s: s.seconds), unit="s", label="measured", fmt=".1f")
SINGLE_LATENCY = _latency(
    "single_client latency_ms", lambda b: b.single_client and b.single_client.latency_ms, "lone client "
)
SINGLE_P50 = SINGLE_LATENCY[0]
SINGLE_P90 = SINGLE_LATENCY[1]
SINGLE_OVER_BATCH = Figure(
    "single_client over_batch_latency",
    _single(lambda s: s.over_batch_latency),
    unit="x",
    higher_is_better=False,
    label="lone p50 / the same batch in-process",
    fmt=".2f",
)
SINGLE_OVER_WORKER_BATCH = Figure(
    "single_client over_worker_batch_latency",
    _single(lambda s: s.over_worker_batch_latency),
    unit="x",
    higher_is_better=False,
    label="lone p50 / the same batch at one worker's threads",
    fmt=".2f",
)

# --- the engine's own times: TorchServe's metric logs, Ray Serve's metrics; what one lacks is absent -------------
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
REPLICA = _stat("server replica_ms", lambda b: b.server and b.server.replica_ms, "replica")
BATCH_WAIT = _stat("server batch_wait_ms", lambda b: b.server and b.server.batch_wait_ms, "batch wait")
BATCHES = Figure("server batches", _server(lambda s: s.batches), unit="batches", fmt="d")
BATCH_FILL = Figure(
    "server mean_batch_fill", _server(lambda s: s.mean_batch_fill), unit="requests per batch", fmt=".1f"
)

# --- where the CPU went during the load ----------------------------------------------------------------
CPU_SECONDS = Figure("cpu seconds", _cpu(lambda c: c.seconds), unit="s", label="measured", fmt=".1f")
CPU_HOST_CORES = Figure("cpu host_cores", _cpu(lambda c: c.host_cores), unit="CPUs", label="host", fmt="d")
CPU_WORKERS_CORES = Figure(
    "cpu workers_cores", _cpu(lambda c: c.workers_cores), unit="cores", label="workers", fmt=".2f"
)
CPU_FRONTEND_CORES = Figure(
    "cpu frontend_cores", _cpu(lambda c: c.frontend_cores), unit="cores", label="frontend", fmt=".2f"
)
CPU_CLIENT_CORES = Figure("cpu client_cores", _cpu(lambda c: c.client_cores), unit="cores", label="client", fmt=".2f")
CPU_OTHER_CORES = Figure(
    "cpu other_cores",
    _cpu(lambda c: c.other_cores),
    unit="cores",
    higher_is_better=False,
    label="other work on the host",
    fmt=".2f",
)
CPU_WORKER_MS_PER_REQUEST = Figure(
    "cpu worker_cpu_ms_per_request",
    _cpu(lambda c: c.worker_cpu_ms_per_request),
    unit="CPU-ms",
    higher_is_better=False,
    label="workers per request",
    fmt=".1f",
)
CPU_CEILING_MS_PER_INFERENCE = Figure(
    "cpu ceiling_cpu_ms_per_inference",
    _cpu(lambda c: c.ceiling_cpu_ms_per_inference),
    unit="CPU-ms",
    higher_is_better=False,
    label="in-process per inference",
    fmt=".1f",
)

CPU_WORKER_OVER_CEILING = Figure(
    "cpu worker_over_ceiling",
    _cpu(_cpu_ratio),
    unit="x",
    higher_is_better=False,
    label="workers / in-process",
    fmt=".3f",
)

REGRESSION = Figure("regression", lambda b: b.regression.status if b.regression else None, label="regression")

CAPACITY_RATE = Figure(
    "capacity rate", _capacity(lambda c: c.rate), unit="requests/s", higher_is_better=True, label="capacity", fmt=".1f"
)
CAPACITY_FAILED = Figure(
    "capacity failed_rate", _capacity(lambda c: c.failed_rate), unit="requests/s", label="failed at", fmt=".1f"
)
CAPACITY_BOUND = Figure("capacity bound_ms", _capacity(lambda c: c.bound_ms), unit="ms", label="bound", fmt="g")
CAPACITY_PERCENTILE = Figure("capacity percentile", _capacity(lambda c: c.percentile), label="percentile", fmt="g")
CAPACITY_STEPS = Figure("capacity steps", _capacity(lambda c: len(c.steps)), label="steps", fmt="d")
CAPACITY_STOPPED = Figure("capacity stopped", _capacity(lambda c: c.stopped), label="search ended")

# MLPerf's inference scenarios, where a figure here answers the same question (so a reader can set them beside
# published numbers): SingleStream's p90 of one query at a time, Offline's throughput with all the work
# available at once (our closed loop), Server's Poisson rate within a tail-latency bound (the capacity).
MLPERF_SINGLE_STREAM = Figure(
    "mlperf SingleStream", SINGLE_P90.read, unit="ms", higher_is_better=False, label="SingleStream p90", fmt=".0f"
)
MLPERF_OFFLINE = Figure(
    "mlperf Offline",
    lambda b: b.inferences_per_s if b.mode == "closed" else None,
    unit="inferences/s",
    higher_is_better=True,
    label="Offline",
    fmt=".1f",
)
MLPERF_SERVER = Figure(
    "mlperf Server", CAPACITY_RATE.read, unit="requests/s", higher_is_better=True, label="Server", fmt=".1f"
)

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
    ENGINE,
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
    *REPLICA,
    *BATCH_WAIT,
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


def values(bench: BenchmarkResult) -> dict[str, Value]:
    """{figure name: value} of every measured figure: what the table artifact holds, unrounded."""
    return {f.name: value for f in FIGURES if (value := f.read(bench)) is not None}


def table_rows(bench: BenchmarkResult) -> list[dict]:
    """The benchmark table artifact: one row per measured figure (NaN as null), plus one per ceiling layout."""
    rows = []
    for figure in FIGURES:
        value = figure.read(bench)
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
