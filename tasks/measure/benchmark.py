"""benchmark: load on the served model, measured against what the hardware does without a server.

In one run, in this order (TorchServe idle for the first two):
  1. the ceiling: the run's traced model.pt called in this process at the same batch_size x
     max_length and thread budget, no server (tasks/ceiling.py);
  2. the client's own capacity: the same load generator against a trivial local endpoint, so a
     reader sees the client was not the limit (tasks/loadgen.py);
  3. the load: closed loop with N clients (the tutorial's 64) or open loop at a fixed rate
     (latency from the intended send time), warm-up excluded, real pairs from a pool, a
     progress line every few seconds;
  4. TorchServe's own account of the load window, from its metric logs: queue time, the
     frontend's time per request, the worker's handler time per batch, batch fill;
  5. a lone client: p50 at concurrency 1, against the latency of one batch in-process;
  6. regression: throughput and p90 against the median of the last N completed runs of the same
     deployment and parameters, read through the Prefect API (tasks/regression.py).
The result is summary.json's `benchmark`, benchmark.json and benchmark.png in the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
from pydantic import BaseModel, Field

from tasks.measure import loadgen as loadgen
from tasks.measure.ceiling import Ceiling
from tasks.verify.checks import NOT_PARAPHRASE, PARAPHRASE
from tasks.config import REPO_ROOT
from tasks.measure.loadgen import LatencyMs, percentiles
from tasks.measure.regression import BUSY_SHARE  # other work above this share of the CPUs: figures unreliable

PROGRESS_EVERY = loadgen.DEFAULT_PROGRESS_EVERY
DEFAULT_PAIRS_FILE = REPO_ROOT.parent / "shared" / "data" / "msr_paraphrase_dev.tsv"
GOLDEN_PAIRS_FILE = REPO_ROOT / "configs" / "golden_pairs.yaml"
BENCHMARK_FILE = "benchmark.json"
CHART_FILE = "benchmark.png"
LOG_SETTLE_S = 0.5  # TorchServe writes a request's metrics just after answering it


class BenchmarkError(RuntimeError):
    """The benchmark could not run as configured; the message says what to fix."""


class Stat(BaseModel):
    count: int
    p50: float
    p90: float
    mean: float


class ServerTimes(BaseModel):
    """TorchServe's own account of the measured window, from its metric logs."""

    source: str
    queue_ms: Stat | None = None  # per request: waiting in the frontend's queue for a batch / a worker
    request_ms: Stat | None = None  # per request: the frontend's whole time, received -> answered
    handler_ms: Stat | None = None  # per batch: the worker's handle() (preprocess + model + postprocess)
    handler_metric: str | None = None  # HandlerTime, or PredictionTime when the handler emits no HandlerTime
    model_ms: Stat | None = None  # per batch: the model call alone, when the handler emits ModelTime
    worker_thread_ms: Stat | None = None  # per batch: the frontend's own time around the worker
    batches: int = 0
    mean_batch_fill: float | None = None  # requests per batch TorchServe actually formed
    note: str | None = None


class ClientCapacity(BaseModel):
    """The load generator alone, against a trivial local endpoint."""

    requests_per_s: float
    concurrency: int
    seconds: float
    latency_ms: LatencyMs
    over_served: float | None = None  # client capacity / served requests/s


class SingleClient(BaseModel):
    """One client, one request at a time: what a lone request waits."""

    requests: int
    seconds: float
    latency_ms: LatencyMs
    # p50 / the in-process latency of the same batch (one pair padded to batch_size), all threads
    over_batch_latency: float | None = None
    over_worker_batch_latency: float | None = None  # ... and at one worker's threads


class CpuUse(BaseModel):
    """Where the CPU went during the measured load, in cores (CPU-seconds per second)."""

    seconds: float
    host_cores: int  # logical CPUs
    workers_cores: float  # TorchServe's Python workers: tokenize + model + protocol
    frontend_cores: float  # TorchServe's Java frontend: HTTP, batching, IPC
    client_cores: float  # this process: the load generator (and the flow's own threads)
    other_cores: float  # everything else on the host: other users' work competes too
    worker_cpu_ms_per_request: float | None = None
    ceiling_cpu_ms_per_inference: float | None = None  # threads / ceiling inferences/s


class BenchmarkResult(BaseModel):
    requests_per_s: float
    inferences_per_s: float
    latency_ms: LatencyMs
    requests: int
    errors: int
    concurrency: int
    seconds: float
    error_rate: float = 0.0
    mode: str = "closed"
    rate: float | None = None  # open loop: the requests/s asked for
    first_error: str | None = None
    pairs: str | None = None  # the pool the requests were drawn from
    ceiling: Ceiling | None = None
    served_over_ceiling: float | None = None  # served inferences/s / in-process inferences/s
    client: ClientCapacity | None = None
    server: ServerTimes | None = None
    single_client: SingleClient | None = None
    cpu: CpuUse | None = None
    regression: dict | None = None
    fingerprint: str | None = None  # what must match for two runs' figures to be compared
    chart: str | None = None
    timeline: list[dict] = Field(default_factory=list, exclude=True)  # benchmark.json only


def summarize(latencies_s: list[float], errors: int, concurrency: int, seconds: float) -> BenchmarkResult:
    """Throughput counts answered requests only; each request is one pair, so one inference."""
    rate = len(latencies_s) / seconds if seconds > 0 else 0.0
    requests = len(latencies_s) + errors
    return BenchmarkResult(
        requests_per_s=rate,
        inferences_per_s=rate,
        latency_ms=percentiles(latencies_s),
        requests=requests,
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        concurrency=concurrency,
        seconds=seconds,
    )


def from_load(result: loadgen.LoadResult) -> BenchmarkResult:
    """Percentiles and errors of the measured requests; throughput from every answer in the window."""
    bench = summarize([s.latency for s in result.ok], result.errors, result.concurrency, result.seconds)
    bench.requests_per_s = bench.inferences_per_s = result.requests_per_s
    bench.mode, bench.rate, bench.first_error = result.mode, result.rate, result.first_error
    bench.timeline = result.timeline()
    return bench


# --- the pool of pairs ---------------------------------------------------------------------------


def load_pool(path: Path | None) -> tuple[list[tuple[str, str]], str]:
    """Real pairs to send: an MRPC TSV or a golden-pairs YAML. None: the MRPC dev split where this
    checkout has ../shared/data, else configs/golden_pairs.yaml."""
    from tasks.verify.accuracy import read_mrpc_lenient
    from tasks.verify.checks import load_golden

    if path is None:
        path = DEFAULT_PAIRS_FILE if DEFAULT_PAIRS_FILE.is_file() else GOLDEN_PAIRS_FILE
    else:
        found = next((p for p in (Path(path), REPO_ROOT / path) if p.is_file()), None)
        if found is None:
            raise BenchmarkError(f"benchmark.pairs_file {path} does not exist; give an MRPC TSV, a golden-pairs "
                                 "YAML, or null for the default")
        path = found
    if path.suffix.lower() in (".yaml", ".yml"):
        pairs = [(a, b) for a, b, _ in load_golden(path)]
    else:
        pairs = read_mrpc_lenient(path)[0]
    if not pairs:
        pairs = [PARAPHRASE[:2], NOT_PARAPHRASE[:2]]
    return pairs, f"{path.name} ({len(pairs)} pairs)"


# --- TorchServe's metric logs -------------------------------------------------------------------

METRIC_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}) - (\w+)\.(\w+):([-+0-9.eE]+)\|#([^|]*)\|#(.*)$")


def _when(stamp: str, tail: str) -> float:
    """The line's time (s since epoch): its ISO prefix (ms, local time), checked against its
    `timestamp:` field (s, UTC) in case the server ran in another time zone."""
    local = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S,%f").timestamp()
    epoch = re.search(r"timestamp:(\d+)", tail)
    if epoch and abs(int(epoch.group(1)) - local) > 2:
        return int(epoch.group(1)) + local % 1
    return local


def read_metrics(log_dir: Path, since: float, until: float, model_name: str | None = None) -> dict[str, list]:
    """Metric values per name logged in [since, until]; PredictionTime/HandlerTime/ModelTime
    also carry their batch's request count."""
    found: dict[str, list] = {}
    for name in ("ts_metrics.log", "model_metrics.log"):
        path = log_dir / name
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = METRIC_LINE.match(line)
            if not match:
                continue
            stamp, metric, _unit, value, dims, tail = match.groups()
            if model_name and ("model_name:" in dims or "ModelName:" in dims) and model_name not in dims:
                continue
            if not since <= _when(stamp, tail) <= until:
                continue
            ids = re.search(r"requestID:(.*?),timestamp:", tail)
            found.setdefault(metric, []).append((float(value), len(ids.group(1).split(",")) if ids else None))
    return found


def _stat(values: list[float], scale: float = 1.0) -> Stat | None:
    if not values:
        return None
    data = np.asarray(values, dtype=float) * scale
    return Stat(count=int(data.size), p50=float(np.percentile(data, 50)), p90=float(np.percentile(data, 90)),
                mean=float(data.mean()))


def server_times(log_dir: Path, since: float, until: float, model_name: str | None = None) -> ServerTimes:
    metrics = read_metrics(log_dir, since, until, model_name)
    values = {name: [v for v, _ in rows] for name, rows in metrics.items()}
    handler_metric = "HandlerTime" if values.get("HandlerTime") else "PredictionTime"
    per_batch = metrics.get(handler_metric, [])
    fills = [n for _, n in per_batch if n]
    queue = values.get("ts_queue_latency_microseconds")
    notes = []
    if not values.get("ModelTime"):
        notes.append("model time: the handler emits no ModelTime metric")
    if handler_metric == "PredictionTime":
        notes.append("handler time is TorchServe's PredictionTime: the worker's whole handle() per batch")
    return ServerTimes(
        source=f"{log_dir}/ts_metrics.log, model_metrics.log (metrics_mode log)",
        queue_ms=_stat(queue, 1e-3) if queue else _stat(values.get("QueueTime", [])),
        request_ms=_stat(values.get("ts_inference_latency_microseconds", []), 1e-3),
        handler_ms=_stat(values.get(handler_metric, [])),
        handler_metric=handler_metric if per_batch else None,
        model_ms=_stat(values.get("ModelTime", [])),
        worker_thread_ms=_stat(values.get("WorkerThreadTime", [])),
        batches=len(per_batch),
        mean_batch_fill=float(np.mean(fills)) if fills else None,
        note="; ".join(notes) or None,
    )


# --- CPU accounting ---------------------------------------------------------------------------


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


def cpu_snapshot(server) -> dict[str, float]:
    """CPU-seconds so far: TorchServe's workers and frontend, this process, and the whole host."""
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
        seconds=seconds, host_cores=psutil.cpu_count() or 1,
        workers_cores=used["workers"], frontend_cores=used["frontend"] + used["launcher"],
        client_cores=used["client"], other_cores=max(0.0, used["host_busy"] - ours),
        worker_cpu_ms_per_request=(after["workers"] - before["workers"]) / requests * 1000 if requests else None,
        ceiling_cpu_ms_per_inference=ceiling.threads / ceiling.inferences_per_s * 1000
        if ceiling and ceiling.inferences_per_s else None,
    )


# --- fingerprint: which runs may be compared -------------------------------------------------

NOT_COMPARED = {
    "serving": {"inference_port", "management_port", "metrics_port", "grpc_inference_port", "grpc_management_port",
                "free_ports", "startup_timeout", "response_timeout"},
    "benchmark": {"enabled", "progress_every", "regression_runs", "regression_tolerance", "regression_action"},
}


def fingerprint(config, resolved) -> str:
    """A short hash of everything that shapes the figures (model, batching, workers, load, host),
    not of what does not (ports, run directory, log cadence)."""
    data = {"host": platform.node(), "resolved": resolved.model_dump(mode="json")}
    for section in ("model", "serving", "benchmark"):
        values = getattr(config, section).model_dump(mode="json")
        data[section] = {k: v for k, v in values.items() if k not in NOT_COMPARED.get(section, set())}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the stage ------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def run(server, model_name: str, model_file: Path, config, resolved, run_dir: Path,
        log: logging.Logger | None = None) -> BenchmarkResult:
    """The benchmark stage: ceiling, client capacity, load, server times, lone client, regression."""
    from tasks.measure import ceiling as ceiling_stage
    from tasks.measure import regression as regression

    log = log or logging.getLogger(__name__)
    settings, serving = config.benchmark, config.serving
    pairs, pool = load_pool(settings.pairs_file)
    url = f"{server.inference_url}/predictions/{model_name}"
    log.info("benchmark: %s, %s loop, %s", pool, settings.mode,
             f"{settings.concurrency} clients" if settings.mode == "closed"
             else f"{settings.rate:g} requests/s (at most {settings.concurrency} open)")

    ceiling = None
    if settings.ceiling_seconds > 0:
        try:
            ceiling = ceiling_stage.measure(model_file, pairs, resolved.initial_workers, resolved.threads_per_worker,
                                            settings.ceiling_seconds)
        except ceiling_stage.CeilingUnavailable as error:
            log.warning("no in-process ceiling: %s", error)
    if ceiling is not None:
        log.info("ceiling (the traced model in-process, no server, %d threads, buckets %s): %.1f inferences/s (%s); "
                 "one full batch %.0f ms; a lone request's batch %.0f ms (%.0f ms at one worker's %d threads)",
                 ceiling.threads, ceiling.buckets, ceiling.inferences_per_s, ceiling.best_layout,
                 ceiling.batch_latency_ms, ceiling.lone_batch_latency_ms, ceiling.worker_lone_batch_latency_ms,
                 resolved.threads_per_worker)

    client = None
    if settings.client_check_seconds > 0:
        with loadgen.TrivialEndpoint() as endpoint:
            trivial = loadgen.load(endpoint.url, {}, pairs, concurrency=settings.concurrency,
                                   duration=settings.client_check_seconds, warmup=0.5, progress_every=None)
        client = ClientCapacity(requests_per_s=trivial.requests_per_s, concurrency=settings.concurrency,
                                seconds=trivial.seconds, latency_ms=trivial.latency())
        log.info("load generator alone (trivial local endpoint, %d clients): %.0f requests/s",
                 settings.concurrency, client.requests_per_s)

    options = dict(mode=settings.mode, concurrency=settings.concurrency, duration=settings.duration,
                   requests=settings.requests, rate=settings.rate, warmup=settings.warmup,
                   progress_every=settings.progress_every, log=log)
    wall_0 = time.time()
    cpu_0 = cpu_snapshot(server)
    result = loadgen.load(url, server.inference_headers(), pairs, **options)
    cpu_1 = cpu_snapshot(server)
    since = wall_0 + settings.warmup
    until = since + result.seconds
    bench = from_load(result)
    bench.pairs, bench.ceiling, bench.client = pool, ceiling, client
    # Warm-up included: the snapshots bracket the whole load, so this is per request sent.
    bench.cpu = cpu_use(cpu_0, cpu_1, len(result.samples), ceiling)
    bench.served_over_ceiling = _ratio(bench.inferences_per_s, ceiling.inferences_per_s if ceiling else None)
    if client is not None:
        client.over_served = _ratio(client.requests_per_s, bench.requests_per_s)
    time.sleep(LOG_SETTLE_S)
    bench.server = server_times(Path(server.server_dir) / "logs", since, until + LOG_SETTLE_S, model_name)

    if settings.single_client_seconds > 0:
        lone = loadgen.load(url, server.inference_headers(), pairs, concurrency=1,
                            duration=settings.single_client_seconds, progress_every=None)
        latency = lone.latency()
        bench.single_client = SingleClient(
            requests=len(lone.measured), seconds=lone.seconds, latency_ms=latency,
            over_batch_latency=_ratio(latency.p50, ceiling.lone_batch_latency_ms if ceiling else None),
            over_worker_batch_latency=_ratio(latency.p50, ceiling.worker_lone_batch_latency_ms if ceiling else None),
        )
    log.info(headline(bench))
    for warning in busy_host_warnings(bench.model_dump()):
        log.warning(warning)

    bench.fingerprint = fingerprint(config, resolved)
    verdict = regression.check(bench, bench.fingerprint, settings.regression_runs, settings.regression_tolerance,
                               settings.regression_action)
    bench.regression = verdict.model_dump()
    (log.warning if verdict.status == "regressed" else log.info)("regression: %s", verdict.message)

    chart = write_chart(bench, run_dir / CHART_FILE, log)
    bench.chart = str(chart) if chart else None
    write_json(bench, run_dir / BENCHMARK_FILE)
    return bench




def busy_host_warnings(bench: dict) -> list[str]:
    """Other work on the host competes with the server and with the ceiling: say so, with how much."""
    warnings = []
    cores = psutil.cpu_count() or 1
    cpu, ceiling = bench.get("cpu") or {}, bench.get("ceiling") or {}
    if (cpu.get("other_cores") or 0) > BUSY_SHARE * cores:
        warnings.append(f"the host was busy with other work during the load ({cpu['other_cores']:.2f} of "
                        f"{cores} CPUs): throughput and latency are lower than this server can do")
    if (ceiling.get("other_cores") or 0) > BUSY_SHARE * cores:
        warnings.append(f"the host was busy with other work while the ceiling was measured "
                        f"({ceiling['other_cores']:.2f} of {cores} CPUs): the ceiling, and so "
                        f"served / in-process, are not reliable")
    return warnings


def headline(bench: BenchmarkResult) -> str:
    lat = bench.latency_ms
    text = (f"benchmark: {bench.inferences_per_s:.1f} inferences/s ({bench.mode} loop, concurrency "
            f"{bench.concurrency}); p50 {lat.p50:.0f} ms, p90 {lat.p90:.0f} ms, p99 {lat.p99:.0f} ms, "
            f"max {lat.max:.0f} ms; errors {bench.errors} ({bench.error_rate:.1%})")
    if bench.served_over_ceiling is not None:
        text += f"; served / in-process {bench.served_over_ceiling:.2f}"
    if bench.client is not None and bench.client.over_served is not None:
        text += f"; client capacity {bench.client.over_served:.0f}x served"
    if bench.single_client is not None:
        single = bench.single_client
        text += f"; lone client p50 {single.latency_ms.p50:.0f} ms"
        if single.over_batch_latency is not None:
            text += (f" = {single.over_batch_latency:.2f}x the same batch in-process "
                     f"({single.over_worker_batch_latency:.2f}x at one worker's threads)")
    if bench.server is not None and bench.server.handler_ms is not None:
        server = bench.server
        queue = f"queue p50 {server.queue_ms.p50:.0f} ms, " if server.queue_ms else ""
        text += (f"; server: {queue}{server.handler_metric} p50 {server.handler_ms.p50:.0f} ms per batch, "
                 f"{server.mean_batch_fill or 0:.1f} requests per batch")
    if bench.cpu is not None:
        text += f"; CPU {cpu_text(bench.cpu.model_dump())}"
    return text


def cpu_text(cpu: dict) -> str:
    text = (f"(cores of {cpu['host_cores']}): workers {cpu['workers_cores']:.2f}, "
            f"frontend {cpu['frontend_cores']:.2f}, "
            f"client {cpu['client_cores']:.2f}, other work on the host {cpu['other_cores']:.2f}")
    if cpu.get("worker_cpu_ms_per_request") and cpu.get("ceiling_cpu_ms_per_inference"):
        text += (f"; workers spend {cpu['worker_cpu_ms_per_request']:.1f} CPU-ms per request vs "
                 f"{cpu['ceiling_cpu_ms_per_inference']:.1f} in-process")
    return text


def write_json(bench: BenchmarkResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**bench.model_dump(mode="json"), "timeline": bench.timeline}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def write_chart(bench: BenchmarkResult, path: Path, log: logging.Logger | None = None) -> Path | None:
    """benchmark.png: throughput and latency over time. A missing matplotlib costs the chart only."""
    try:
        from tasks.report.charts import timeline_chart
    except ImportError as error:
        (log or logging.getLogger(__name__)).warning("no chart: %s (install matplotlib)", error)
        return None
    return timeline_chart(bench, path)


def markdown_lines(bench: dict) -> list[str]:
    """The summary artifact's lines on the ceiling, the client, a lone request, TorchServe's times
    and the regression verdict (from summary.json's `benchmark`)."""
    lines = []
    ceiling, client, single, server = (bench.get(k) for k in ("ceiling", "client", "single_client", "server"))
    if ceiling:
        ratio = bench.get("served_over_ceiling")
        text = (f"- Ceiling (the traced model in-process, no server, {ceiling['threads']} threads, "
                f"{ceiling['best_layout']}): {ceiling['inferences_per_s']:.1f} inferences/s; one batch "
                f"{ceiling['batch_latency_ms']:.0f} ms")
        lines.append(text + (f". **Served / in-process: {ratio:.2f}**" if ratio is not None else ""))
    if client and client.get("over_served") is not None:
        lines.append(f"- Load generator alone (trivial local endpoint): {client['requests_per_s']:.0f} requests/s, "
                     f"{client['over_served']:.0f}x the served rate: the client was not the limit")
    if single:
        text = f"- Lone client (concurrency 1): p50 {single['latency_ms']['p50']:.0f} ms"
        if single.get("over_batch_latency") is not None:
            text += (f" = {single['over_batch_latency']:.2f}x the same batch in-process "
                     f"({single['over_worker_batch_latency']:.2f}x at one worker's threads)")
        lines.append(text)
    if server and server.get("handler_ms"):
        queue = server.get("queue_ms") or {}
        lines.append(f"- TorchServe: queue p50 {queue.get('p50', float('nan')):.0f} ms; "
                     f"{server['handler_metric']} p50 {server['handler_ms']['p50']:.0f} ms per batch; "
                     f"{server.get('mean_batch_fill') or 0:.1f} requests per batch")
    if bench.get("cpu"):
        lines.append(f"- CPU during the load {cpu_text(bench['cpu'])}")
    for warning in busy_host_warnings(bench):
        lines.append(f"- **Warning**: {warning}")
    regression = bench.get("regression")
    if regression:
        lines.append(f"- Regression check: **{regression['status']}** — {regression['message']}")
    if bench.get("chart"):
        lines.append(f"- Chart: `{bench['chart']}`")
    return ["", *[line for line in lines if line]] if lines else []


def table_rows(bench: dict) -> list[dict]:
    """The benchmark table artifact: one row per figure, names stable from night to night
    (tasks/regression.py reads `inferences_per_s` and `latency_ms p90` back)."""
    rows: list[dict] = []

    def add(name: str, value) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            rows.append({"figure": name, "value": None if math.isnan(value) else round(value, 3)})
        elif isinstance(value, str) and name in ("mode", "fingerprint", "pairs", "first_error"):
            rows.append({"figure": name, "value": value})

    for key, value in bench.items():
        if not isinstance(value, (dict, list)):
            add(key, value)
    for key, value in (bench.get("latency_ms") or {}).items():
        add(f"latency_ms {key}", value)
    for section in ("ceiling", "client", "single_client", "server", "cpu"):
        for key, value in (bench.get(section) or {}).items():
            if isinstance(value, dict):
                for sub, number in value.items():
                    add(f"{section} {key} {sub}", number)
            else:
                add(f"{section} {key}", value)
    for layout in (bench.get("ceiling") or {}).get("layouts", []):
        add(f"ceiling layout {layout['name']} inferences_per_s", layout["inferences_per_s"])
    regression = bench.get("regression") or {}
    if regression:
        rows.append({"figure": "regression", "value": regression.get("status")})
    return rows
