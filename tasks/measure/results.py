"""What the benchmark stage measured: summary.json's `benchmark`, benchmark.json and the flow's verdict.

Plain data: how the figures are named and shown is tasks/measure/figures.py's job.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from tasks.measure.capacity import Capacity
from tasks.measure.ceiling import Ceiling, NoCeiling
from tasks.measure.loadgen import LatencyMs, LoadResult

NAN = float("nan")
WINDOW_S = 10.0  # throughput is also reported per window of this many seconds
STABILITY_CV = 0.1  # windows varying more than this (std / mean) mark the run unstable
LATE_AFTER_S = 0.01  # open loop: a request sent this long after its intended time is late


class Stat(BaseModel):
    count: int
    p50: float
    p90: float
    mean: float
    p95: float = NAN
    p99: float = NAN
    max: float = NAN


class ServerTimes(BaseModel):
    """The serving engine's own account of the measured window: TorchServe's from its metric logs, Ray Serve's from
    its Prometheus metrics (tasks/engines/*/metrics.py). A figure the engine does not have is None, never made up."""

    source: str
    queue_ms: Stat | None = None  # per request: waiting for a batch / a worker (TorchServe's frontend queue;
    # Ray Serve's router, waiting for a replica with room)
    request_ms: Stat | None = (
        None  # per request: the frontend's (Ray: the HTTP proxy's) whole time, received -> answered
    )
    handler_ms: Stat | None = None  # per batch: the worker's handle() (preprocess + model + postprocess)
    handler_metric: str | None = None  # HandlerTime, or PredictionTime when the handler emits no HandlerTime
    # per batch, the handler's phases (TorchServe's @timed profiling: ts_handler_preprocess / _inference / ...)
    preprocess_ms: Stat | None = None
    model_ms: Stat | None = None
    postprocess_ms: Stat | None = None
    worker_thread_ms: Stat | None = None  # per batch: TorchServe's frontend's own time around the worker
    replica_ms: Stat | None = None  # per request, in a Ray Serve replica: batch wait + model + answer
    batch_wait_ms: Stat | None = None  # per batch (Ray Serve): how long it waited for batch-mates
    batches: int = 0
    mean_batch_fill: float | None = None  # requests per batch the server actually formed
    batch_sizes: dict[int, int] = {}  # batches of each size (Ray Serve: exact counts); empty where not known
    note: str | None = None


class WorkerLoad(BaseModel):
    worker: str  # TorchServe's worker thread name, W-<port>-<model>_<version>; Ray: the replica's pid and unit
    register_to_ready_s: float | None = None  # "Model ... loaded." (registered) -> this worker WORKER_MODEL_LOADED
    worker_load_ms: float | None = None  # its own start + model load (TorchServe's WorkerLoadTime; a replica's record)


class ModelLoad(BaseModel):
    """How long the model took to load, per worker (replica): TorchServe's log (ts_log.log), Ray Serve's replicas'
    own records."""

    workers: list[WorkerLoad] = []
    register_to_ready_s: float | None = None  # the slowest worker: when the model could serve at full width
    worker_load_ms: float | None = None  # the slowest worker's own load


class Mark(BaseModel):
    """Where a measured window begins, as an engine needs to know it: the time, and what its cumulative counters
    said then (an engine that reads timestamped logs needs only the time)."""

    at: float  # s since the epoch
    counters: dict = {}  # the engine's own


class Figures(BaseModel):
    """An engine's own account of a load window and of the model's load; None where it has no such figure."""

    times: ServerTimes | None = None
    model_load: ModelLoad | None = None


class Memory(BaseModel):
    """Resident memory (RSS) of the server's processes, sampled during the load; peaks in MiB."""

    samples: int
    frontend_rss_mib: float  # the rest of the server, peak: TorchServe's Java frontend; Ray's proxy, controller, GCS...
    workers_rss_mib: float  # all workers together, peak of the sum
    worker_rss_mib: float  # the largest single worker, peak
    total_rss_mib: float  # frontend + workers, peak of the sum


class Accelerator(BaseModel):
    """What the accelerator (or, on the CPU, the workers) did during the load, from its own tool."""

    kind: str  # "neuron" (neuron-monitor), "cuda" (nvidia-smi), "cpu" (per-process CPU, psutil)
    source: str
    samples: int = 0
    utilization_pct_mean: float | None = None  # NeuronCore / GPU utilisation, or workers' CPU % of their cores
    utilization_pct_max: float | None = None
    per_unit_pct: dict[str, float] = {}  # mean per NeuronCore / GPU / worker process
    device_memory_used_mib: float | None = None  # peak
    device_memory_total_mib: float | None = None
    note: str | None = None  # why some of it is missing


class Windows(BaseModel):
    """Throughput per fixed window of the measured load, and how much it varied."""

    seconds: float  # each window's length
    requests_per_s: list[float]
    cv: float | None = None  # coefficient of variation: std / mean of the windows
    threshold: float
    stable: bool = True  # cv <= threshold (fewer than 2 windows: unknown, counted stable)


class Histogram(BaseModel):
    """The measured latencies' histogram: len(edges_ms) == len(counts) + 1."""

    edges_ms: list[float]
    counts: list[int]


class OpenLoop(BaseModel):
    """Open loop: what was asked for against what happened. Latency is from the intended send."""

    offered_per_s: float  # the schedule's rate
    sent_per_s: float  # measured requests actually sent / measured seconds
    achieved_per_s: float  # answers (200) in the measured window / its seconds
    late: int  # sent more than late_after_ms after their intended time (no free connection)
    late_after_ms: float
    dropped: int  # never sent: the backlog waiting for a connection was full


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
    ceiling_cpu_ms_per_inference: float | None = None  # the in-process run's measured CPU time per inference


class Moved(BaseModel):
    """One compared figure: tonight against the median of earlier nights."""

    figure: str
    unit: str = ""
    higher_is_better: bool
    current: float
    baseline: float  # median of the earlier nights
    change: float  # current - baseline, in the figure's unit
    relative: float | None = None  # current / baseline - 1 (None when the baseline is 0)
    tolerance: float  # the configured tolerance: relative, or in the figure's unit when absolute
    absolute: bool = False
    spread: float  # the earlier nights' own spread: largest |night - median|, in the figure's unit
    allowed: float  # how much worse it may get, in the figure's unit: max(tolerance, spread)
    regressed: bool


class Regression(BaseModel):
    """This run against the median of earlier comparable runs (tasks/measure/regression.py)."""

    status: str  # "skipped", "no history", "ok", "regressed"
    action: str  # "warn" or "fail"
    runs: int = 0  # prior runs compared with
    tolerance: float  # the default relative tolerance
    baseline: dict[str, float] = {}  # medians of the prior runs, by figure name
    current: dict[str, float] = {}
    change: dict[str, float] = {}  # current / baseline - 1
    problems: list[str] = []
    message: str = ""
    table: list[Moved] = []  # every compared figure, regressed or not: what moved, by how much, allowed

    @property
    def regressed(self) -> list[Moved]:
        """The figures that moved the wrong way past what is allowed."""
        return [row for row in self.table if row.regressed]

    @property
    def failed(self) -> bool:
        """Regressed, and the run was asked to fail on a regression."""
        return self.status == "regressed" and self.action == "fail"


class BenchmarkResult(BaseModel):
    engine: str | None = None  # the engine that served the load (serving.engine): its night's figures only
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
    open_loop: OpenLoop | None = None
    windows: Windows | None = None
    histogram: Histogram | None = None
    model_load: ModelLoad | None = None
    memory: Memory | None = None
    accelerator: Accelerator | None = None
    accuracy: float | None = None  # the check stage's accuracy on checks.accuracy_file, when configured
    first_error: str | None = None
    pairs: str | None = None  # the pool the requests were drawn from
    ceiling: Ceiling | NoCeiling | None = None  # NoCeiling: not measurable here, and why; None: not asked for
    served_over_ceiling: float | None = None  # served inferences/s / in-process inferences/s
    # Why served_over_ceiling is not to be trusted tonight (the load or the ceiling varied over its windows more
    # than stability_cv); None: both were steady. An unreliable ratio is shown, never compared with other nights.
    comparison_unreliable: str | None = None
    client: ClientCapacity | None = None
    server: ServerTimes | None = None
    single_client: SingleClient | None = None
    capacity: Capacity | None = None  # the highest Poisson rate within the latency bound (MLPerf's Server)
    cpu: CpuUse | None = None
    warnings: list[str] = []  # figures a reader should not trust, and why (a busy host)
    regression: Regression | None = None
    fingerprint: str | None = None  # what must match for two runs' figures to be compared
    chart: str | None = None
    timeline: list[dict] = Field(default_factory=list, exclude=True)  # benchmark.json only

    @property
    def measured_ceiling(self) -> Ceiling | None:
        """The ceiling's figures, when it was measured."""
        return self.ceiling if isinstance(self.ceiling, Ceiling) else None

    @property
    def regression_failed(self) -> bool:
        """The run must fail: it regressed against earlier nights and regression_action is fail."""
        return self.regression is not None and self.regression.failed

    @classmethod
    def from_load(
        cls,
        result: LoadResult,
        window_s: float = WINDOW_S,
        stability_cv: float = STABILITY_CV,
        late_after_s: float = LATE_AFTER_S,
    ) -> BenchmarkResult:
        """Percentiles and errors of the measured requests; throughput from every answer in the
        window (each request is one pair, so one inference), and per `window_s` window; the error
        rate counts dropped requests (open loop) as failed."""
        requests = len(result.measured)
        edges, counts = result.histogram()
        return cls(
            requests_per_s=result.requests_per_s,
            inferences_per_s=result.requests_per_s,
            latency_ms=result.latency(),
            requests=requests,
            errors=result.errors,
            error_rate=(result.errors + result.dropped) / requests if requests else 0.0,
            concurrency=result.concurrency,
            seconds=result.seconds,
            mode=result.mode,
            rate=result.rate,
            first_error=result.first_error,
            timeline=result.timeline(),
            windows=windows(result.windows(window_s), window_s, stability_cv),
            histogram=Histogram(edges_ms=edges, counts=counts) if counts else None,
            open_loop=OpenLoop(
                offered_per_s=result.rate,
                achieved_per_s=result.requests_per_s,
                sent_per_s=(requests - result.dropped) / result.seconds if result.seconds > 0 else 0.0,
                late=result.late(late_after_s),
                late_after_ms=late_after_s * 1000,
                dropped=result.dropped,
            )
            if result.mode == "open" and result.rate
            else None,
        )


def windows(rates: list[float], seconds: float, threshold: float) -> Windows:
    """The windows' coefficient of variation (numpy: population std / mean); above threshold: unstable."""
    values = np.asarray(rates, dtype=float)
    cv = float(values.std() / values.mean()) if values.size >= 2 and values.mean() > 0 else None
    return Windows(
        seconds=seconds,
        requests_per_s=[round(v, 3) for v in rates],
        cv=cv,
        threshold=threshold,
        stable=cv is None or cv <= threshold,
    )
