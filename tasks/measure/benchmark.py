"""benchmark: load on the served model, measured against what the hardware does without a server.

The served model is a ServedModel (served.py): HTTP, and what the engine says of itself; nothing here names an
engine. In one run, in this order (the server idle for the first two):
  1. the ceiling: the run's traced model.pt called in this process at the same batch_size x
     max_length and thread budget, no server (ceiling.py);
  2. the client's own capacity: the same load generator against a trivial local endpoint, so a
     reader sees the client was not the limit (loadgen.py);
  3. the load: closed loop with N clients (the tutorial's 64) or open loop at a fixed rate
     (latency from the intended send time; offered against achieved, late and dropped requests),
     warm-up excluded, real pairs from a pool; throughput per
     window and its variation (stable or not), the latency histogram; where the CPU went meanwhile
     (cpu.py), the server's memory and the accelerator's use (telemetry.py);
  4. the serving engine's own account of the load window (TorchServe's metric logs, Ray Serve's Prometheus
     metrics) and how long the model took to load per worker or replica (served.py, tasks/engines/);
  5. a lone client: p50 at concurrency 1, against the latency of one batch in-process;
     then, with benchmark.capacity.enabled, the capacity: the highest rate of Poisson arrivals whose p99
     stays within a bound (capacity.py; MLPerf's Server scenario);
  6. regression: every headline figure against the median of the last N completed runs of the same
     deployment, parameters and engine, read through the Prefect API (regression.py).
While it runs, tasks/common/progress.py shows where the stage stands (a Prefect progress artifact,
one live terminal line, a log line as the load starts and at each quarter of it), each part
weighted by its planned seconds (planned_seconds).
The result (results.py) is summary.json's `benchmark`, benchmark.json and benchmark.png in the run
directory; figures.py names and shows its figures. Parts 3-5 for one serving setting are measure_setting,
which flows/sweep.py calls once per setting of its grid (with measure_ceiling per model).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

from tasks.common.config import BenchmarkConfig, RunConfig
from tasks.common.errors import PipelineError
from tasks.common.keys import current_suffix
from tasks.common.progress import StageProgress
from tasks.common.runlog import Log, stage_logger
from tasks.common.sizing import ResolvedServing
from tasks.measure import ceiling as ceiling_stage
from tasks.measure import figure_text, loadgen, regression, trivial_endpoint
from tasks.measure.busy_host import busy_host_warnings
from tasks.measure.capacity import Capacity, Search, poisson_steps
from tasks.measure.cpu import cpu_snapshot, cpu_use
from tasks.measure.fingerprint import fingerprint
from tasks.measure.loadgen import QUIET, Load, Watch
from tasks.measure.results import BenchmarkResult, ClientCapacity, Figures, Mark, SingleClient
from tasks.measure.served import ServedModel
from tasks.measure.telemetry import Telemetry
from tasks.prepare.trace import TracedModel
from tasks.verify.checks import CheckResult
from tasks.verify.pairs import load_pool, missing_dev_split

BENCHMARK_FILE = "benchmark.json"
CHART_FILE = "benchmark.png"
REGRESSION_FIX = (
    "find what made this run slower than earlier nights (the summary's regression line names the "
    "figure), or run with --regression warn to report it without failing"
)


CEILING_START_S = 10.0  # the ceiling's child process: start, import torch, load the graphs, warm up
SERVER_FIGURES_S = 2.0  # the engine's account of the window: its logs settle, or its metrics are reported
WRAP_UP_S = 1.0  # regression (a query to the Prefect API), the chart, benchmark.json


class BenchmarkError(PipelineError):
    """The benchmark could not run as configured, or regressed with regression_action: fail."""


# --- the stage ------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def measure_ceiling(
    server_dir: Path,
    model_dir: Path,
    pairs: list[tuple[str, str]],
    resolved: ResolvedServing,
    seconds: float,
    log: Log,
    windows: int = 1,
) -> ceiling_stage.Ceiling | ceiling_stage.NoCeiling | None:
    """The ceiling; a NoCeiling saying why when this host cannot measure it; None when not asked for."""
    if seconds <= 0:
        return None
    try:
        ceiling = ceiling_stage.measure_beside(server_dir, resolved, model_dir, pairs, seconds, windows)
    except ceiling_stage.CeilingUnavailable as error:
        log.warning("ceiling unavailable: %s", error)
        return ceiling_stage.NoCeiling(unavailable=error.message)
    log.info(
        "ceiling (the traced model in-process, no server, %d threads, buckets %s): %.1f inferences/s (%s); "
        "one full batch %.0f ms; a lone request's batch %.0f ms (%.0f ms at one worker's %d threads)",
        ceiling.threads,
        ceiling.buckets,
        ceiling.inferences_per_s,
        ceiling.best_layout,
        ceiling.batch_latency_ms,
        ceiling.lone_batch_latency_ms,
        ceiling.worker_lone_batch_latency_ms,
        resolved.threads_per_worker,
    )
    return ceiling


def client_capacity(pairs: list[tuple[str, str]], settings: BenchmarkConfig, log: Log) -> ClientCapacity | None:
    """The load generator alone against a trivial local endpoint, at settings.concurrency clients for
    settings.client_check_seconds s; None when that is 0."""
    if settings.client_check_seconds <= 0:
        return None
    with trivial_endpoint.TrivialEndpoint() as endpoint:
        trivial = loadgen.load(
            endpoint.url,
            {},
            pairs,
            Load(
                concurrency=settings.concurrency,
                duration=settings.client_check_seconds,
                at_least=settings.concurrency,
                warmup=0.5,
            ),
        )
    log.info(
        "load generator alone (trivial local endpoint, %d clients): %.0f requests/s",
        settings.concurrency,
        trivial.requests_per_s,
    )
    return ClientCapacity(
        requests_per_s=trivial.requests_per_s,
        concurrency=settings.concurrency,
        seconds=trivial.seconds,
        latency_ms=trivial.latency(),
    )


def _single_client(
    url: str, headers: dict, pairs: list[tuple[str, str]], seconds: float, ceiling: ceiling_stage.Ceiling | None
) -> SingleClient | None:
    if seconds <= 0:
        return None
    lone = loadgen.load(url, headers, pairs, Load(concurrency=1, duration=seconds, at_least=1))
    latency = lone.latency()
    return SingleClient(
        requests=len(lone.measured),
        seconds=lone.seconds,
        latency_ms=latency,
        over_batch_latency=_ratio(latency.p50, ceiling.lone_batch_latency_ms if ceiling else None),
        over_worker_batch_latency=_ratio(latency.p50, ceiling.worker_lone_batch_latency_ms if ceiling else None),
    )


def planned_seconds(settings: BenchmarkConfig, resolved: ResolvedServing, ceiling: bool = True) -> dict[str, float]:
    """The stage's parts and about how long each should take (s), in order: the progress's weights.
    A load of a count of requests has no planned duration: it is weighed as `duration` s."""
    workers, threads = resolved.initial_workers, resolved.threads_per_worker
    rounds = (settings.ceiling_windows + 1) / settings.ceiling_windows  # the windows, and a first round not counted
    layouts = (1 + (workers > 1) + (threads > 1)) * rounds + (0.5 if workers == 1 else 1.0)  # + the lone batches
    return {
        "ceiling": CEILING_START_S + layouts * settings.ceiling_seconds if ceiling and settings.ceiling_seconds else 0,
        "client check": settings.client_check_seconds + 0.5 if settings.client_check_seconds > 0 else 0,
        "load": settings.warmup + settings.duration,
        "server figures": SERVER_FIGURES_S,
        "lone client": settings.single_client_seconds,
        "capacity": settings.capacity.budget_seconds if settings.capacity.enabled else 0,
        "wrap-up": WRAP_UP_S,
    }


def accuracy_of(checks: list[CheckResult] | None) -> float | None:
    """The check stage's accuracy on checks.accuracy_file, when one was configured and scored."""
    found = next((c for c in checks or [] if c.name == "accuracy" and c.metrics), None)
    value = found.metrics.get("accuracy") if found else None
    return float(value) if isinstance(value, (int, float)) else None


def run(
    served: ServedModel,
    traced: TracedModel | None,
    config: RunConfig,
    resolved: ResolvedServing,
    run_dir: Path,
    log: Log | None = None,
    accuracy: float | None = None,
    suffix: str | None = None,
) -> BenchmarkResult:
    """The benchmark stage: ceiling, client capacity, load, server times, lone client, regression.
    accuracy: the check stage's (accuracy_of(checks)), compared with earlier nights with the rest. config: the
    night's, its serving.engine the served model's (the fingerprint's); suffix: the engine's artifact keys, whose
    earlier nights the regression reads (tasks/common/keys.py; None: this run's deployment's)."""
    log = log or stage_logger(__name__)
    settings = config.benchmark
    pairs, pool = load_pool(settings.pairs_file)
    if settings.pairs_file is None and (missing := missing_dev_split()):
        log.warning(missing)
    log.info(
        "benchmark: %s, %s loop, %s",
        pool,
        settings.mode,
        f"{settings.concurrency} clients"
        if settings.mode == "closed"
        else f"{settings.rate:g} requests/s (at most {settings.concurrency} open)",
    )
    with StageProgress("benchmark", planned_seconds(settings, resolved, traced is not None), log=log) as progress:
        bench = _measure(served, pairs, pool, traced, config, resolved, log, accuracy, progress)
        progress.phase("wrap-up", "regression against earlier runs, the chart, benchmark.json")
        bench.fingerprint = fingerprint(config, resolved)
        bench.regression = regression.check(
            bench,
            bench.fingerprint,
            settings.regression_runs,
            settings.regression_tolerance,
            settings.regression_action,
            settings.regression_tolerances,
            # the engine's artifact keys: its earlier nights, and its accepted baseline (tools.baseline)
            suffix if suffix is not None else current_suffix(resolved.backend),
        )
        (log.warning if bench.regression.status == "regressed" else log.info)(
            "regression: %s", bench.regression.message
        )

        chart = write_chart(bench, run_dir / config.serving.engine_file(CHART_FILE, config.serving.engine), log)
        bench.chart = str(chart) if chart else None
        write_json(bench, run_dir / config.serving.engine_file(BENCHMARK_FILE, config.serving.engine))
    return bench


def _measure(
    served: ServedModel,
    pairs: list[tuple[str, str]],
    pool: str,
    traced: TracedModel | None,
    config: RunConfig,
    resolved: ResolvedServing,
    log: Log,
    accuracy: float | None,
    progress: StageProgress,
) -> BenchmarkResult:
    """The stage's measurements, each part announced to `progress` as it starts."""
    settings = config.benchmark
    # A brought .mar: no graph to load in-process, so no ceiling (nor a served / in-process ratio).
    if traced is not None and settings.ceiling_seconds > 0:
        progress.phase("ceiling", "ceiling: the traced model in-process, no server")
    bench_ceiling = (
        measure_ceiling(
            served.server_dir,
            traced.model_dir,
            pairs,
            resolved,
            settings.ceiling_seconds,
            log,
            settings.ceiling_windows,
        )
        if traced
        else None
    )
    if settings.client_check_seconds > 0:
        progress.phase("client check", "client check: the load generator against a trivial local endpoint")
    client = client_capacity(pairs, settings, log)
    bench = measure_setting(
        served, pairs, settings, resolved, log, ceiling=bench_ceiling, client=client, progress=progress
    )
    bench.pairs, bench.accuracy = pool, accuracy
    return bench


def _no_phase(name: str, what: str | None = None) -> None:
    """measure_setting without a progress: nothing to announce."""


def measure_setting(
    served: ServedModel,
    pairs: list[tuple[str, str]],
    settings: BenchmarkConfig,
    resolved: ResolvedServing,
    log: Log,
    *,
    ceiling: ceiling_stage.Ceiling | ceiling_stage.NoCeiling | None = None,
    client: ClientCapacity | None = None,
    progress: StageProgress | None = None,
) -> BenchmarkResult:
    """One serving setting, measured against the served model: the load as `settings` (the config's benchmark
    section) say -- mode, concurrency, duration or requests, warm-up; where the CPU, memory and accelerator went
    meanwhile; the engine's own account of the window; a lone client; the headline and the warnings. `ceiling`
    (measured beforehand, the server idle) and `client` (the load generator's own capacity) give the ratios. The
    benchmark stage calls it once; flows/sweep.py once per setting. progress: each part announced as it starts;
    None: no progress, nor the load's progress log lines."""
    phase = progress.phase if progress is not None else _no_phase
    url, headers = served.predictions_url, served.inference_headers()
    ceiling_measured = ceiling if isinstance(ceiling, ceiling_stage.Ceiling) else None
    phase("load", "load: starting the clients")
    bench, mark = _load(served, pairs, settings, resolved, log, progress, ceiling_measured)
    bench.ceiling, bench.client, bench.engine = ceiling, client, served.engine_name
    # Open loop: the load is an offered rate, not what the server can do -- no ratio to the ceiling.
    bench.served_over_ceiling = (
        None
        if settings.mode == "open"
        else _ratio(bench.inferences_per_s, ceiling_measured.inferences_per_s if ceiling_measured else None)
    )
    bench.comparison_unreliable = unreliable_comparison(bench, ceiling_measured, settings.stability_cv)
    if client is not None:
        client.over_served = _ratio(client.requests_per_s, bench.requests_per_s)
    phase("server figures", f"{served.engine_name}'s own account of the load")
    figures = mark.figures()
    bench.server, bench.model_load = figures.times, figures.model_load
    if settings.single_client_seconds > 0:
        phase("lone client", "a lone client: latency at concurrency 1")
    bench.single_client = _single_client(url, headers, pairs, settings.single_client_seconds, ceiling_measured)
    if settings.capacity.enabled:
        phase(
            "capacity",
            f"capacity: Poisson load, the highest rate with p{settings.capacity.percentile:g} "
            f"within {settings.capacity.bound_ms:g} ms",
        )
        bench.capacity = measure_capacity(url, headers, pairs, settings, bench.requests_per_s, log)
    log.info(figure_text.headline(bench))
    bench.warnings = _warnings(bench)
    for warning in bench.warnings:
        log.warning(warning)
    return bench


def _load(
    served: ServedModel,
    pairs: list[tuple[str, str]],
    settings: BenchmarkConfig,
    resolved: ResolvedServing,
    log: Log,
    progress: StageProgress | None,
    ceiling: ceiling_stage.Ceiling | None,
) -> tuple[BenchmarkResult, WindowMark]:
    """The load, with the CPU, memory and accelerator use around it, and the engine's mark as its warm-up ends."""
    load = Load(
        mode=settings.mode,
        concurrency=settings.concurrency,
        duration=settings.duration,
        at_least=settings.concurrency,  # one answer per client: a short window on a busy host holds some
        requests=settings.requests,
        rate=settings.rate if settings.mode == "open" else None,
        warmup=settings.warmup,
        arrivals=settings.arrivals,
        seed=settings.capacity.seed,
        max_backlog=settings.concurrency if settings.mode == "open" else None,
    )
    mark = WindowMark(served, log)
    watch = (
        Watch(settings.progress_every, log, on_progress=progress.load("load"), on_measuring=mark.take)
        if progress is not None
        else replace(QUIET, on_measuring=mark.take)
    )
    cpu_0 = cpu_snapshot(served.processes())
    with Telemetry(served.processes, resolved.backend, settings.telemetry_every) as telemetry:
        result = loadgen.load(served.predictions_url, served.inference_headers(), pairs, load, watch)
        cpu_1 = cpu_snapshot(served.processes())
    bench = BenchmarkResult.from_load(result, settings.window, settings.stability_cv)
    bench.memory, bench.accelerator = telemetry.memory(), telemetry.accelerator()
    # Warm-up included: the snapshots bracket the whole load, so this is per request sent.
    bench.cpu = cpu_use(cpu_0, cpu_1, len(result.samples) - result.dropped, ceiling)
    return bench, mark


class WindowMark:
    """The engine's mark, taken as the load's warm-up ends (the load generator calls `take` then: an engine with
    cumulative counters reads them at that moment), and its account of the window from there. A mark or an
    account the engine could not give costs those figures only, with a warning: absent, never guessed."""

    def __init__(self, served: ServedModel, log: Log):
        self.served, self.log = served, log
        self.mark: Mark | None = None
        self.error: str | None = None

    def take(self) -> None:
        try:
            self.mark = self.served.mark()
        except PipelineError as error:
            self.error = str(error)

    def figures(self) -> Figures:
        if self.mark is None:
            self.log.warning("no server figures: %s", self.error or "the load ended before its warm-up")
            return Figures()
        try:
            return self.served.figures(self.mark)
        except PipelineError as error:
            self.log.warning("no server figures: %s", error)
            return Figures()


def unreliable_comparison(bench: BenchmarkResult, ceiling: ceiling_stage.Ceiling | None, limit: float) -> str | None:
    """Why served / in-process should not be trusted tonight: either side varied over its windows by more than
    `limit` (std / mean, the load's stability_cv); None when both were steady or there is no ratio."""
    if bench.served_over_ceiling is None or ceiling is None:
        return None
    reasons = []
    if bench.windows is not None and not bench.windows.stable:
        reasons.append(
            f"the load's throughput varied {bench.windows.cv:.1%} over {len(bench.windows.requests_per_s)} windows"
        )
    if ceiling.cv is not None and ceiling.cv > limit:
        reasons.append(f"the ceiling varied {ceiling.cv:.1%} over {ceiling.windows} windows")
    return f"{' and '.join(reasons)}, over the {limit:.0%} allowed" if reasons else None


def _warnings(bench: BenchmarkResult) -> list[str]:
    """Figures a reader should not trust, and why: a busy host, an unstable load, an unsteady comparison."""
    warnings = busy_host_warnings(bench)
    if bench.comparison_unreliable:
        warnings.append(
            f"served / in-process {bench.served_over_ceiling:.2f} is unreliable tonight: "
            f"{bench.comparison_unreliable}; it is shown, not compared with earlier nights"
        )
    if bench.windows is not None and not bench.windows.stable:
        warnings.append(
            f"throughput varied by {bench.windows.cv:.1%} (std / mean) across {len(bench.windows.requests_per_s)} "
            f"windows of {bench.windows.seconds:g} s, over the {bench.windows.threshold:.0%} allowed: the run "
            f"was unstable, its figures are not a steady state"
        )
    return warnings


def measure_capacity(
    url: str, headers: dict, pairs: list[tuple[str, str]], settings: BenchmarkConfig, start_rate: float, log: Log
) -> Capacity:
    """The capacity search (capacity.py), from the rate the load just served, within its own time budget."""
    search = settings.capacity
    measure = poisson_steps(
        url,
        headers,
        pairs,
        concurrency=settings.concurrency,
        bound_ms=search.bound_ms,
        percentile=search.percentile,
        seed=search.seed,
        warmup=search.step_warmup,
    )
    found = Search(
        measure,
        bound_ms=search.bound_ms,
        percentile=search.percentile,
        precision=search.precision,
        min_step_seconds=search.min_step_seconds,
        beyond=search.beyond,
        budget_seconds=search.budget_seconds,
        step_overhead_s=search.step_warmup,
    ).run(start_rate)
    for step in found.steps:
        log.info(
            "capacity step: %.1f requests/s offered (Poisson), %.1f answered, p%g %.0f ms, %d errors, %d dropped: %s",
            step.rate,
            step.achieved,
            search.percentile,
            step.percentile_ms,
            step.errors,
            step.dropped,
            "passed" if step.passed else "failed",
        )
    log.info(
        "capacity at p%g <= %g ms: %s (%s)",
        search.percentile,
        search.bound_ms,
        f"{found.rate:.1f} requests/s" if found.rate is not None else "none",
        found.stopped,
    )
    return found


def raise_if_regressed(bench: BenchmarkResult) -> None:
    """Fail the stage when the run regressed against earlier nights and regression_action is fail."""
    if bench.regression is not None and bench.regression_failed:
        raise BenchmarkError(f"regression: {bench.regression.message}", fix=REGRESSION_FIX)


def write_json(bench: BenchmarkResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**bench.model_dump(mode="json"), "timeline": bench.timeline}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def write_chart(bench: BenchmarkResult, path: Path, log: Log | None = None) -> Path | None:
    """benchmark.png: throughput and latency over time. A missing matplotlib costs the chart only."""
    try:
        from tasks.measure.charts import timeline_chart
    except ImportError as error:
        (log or logging.getLogger(__name__)).warning("no chart: %s (install matplotlib)", error)
        return None
    return timeline_chart(bench, path)
