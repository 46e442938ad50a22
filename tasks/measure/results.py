"""What the benchmark stage measured: summary.json's `benchmark`, benchmark.json and the flow's verdict.

Plain data: how the figures are named and shown is tasks/measure/figures.py's job.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.measure.ceiling import Ceiling
from tasks.measure.loadgen import LatencyMs, LoadResult


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
    # per batch, the handler's phases (TorchServe's @timed profiling: ts_handler_preprocess / _inference / ...)
    preprocess_ms: Stat | None = None
    model_ms: Stat | None = None
    postprocess_ms: Stat | None = None
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


class Regression(BaseModel):
    """This run against the median of earlier comparable runs (tasks/measure/regression.py)."""

    status: str  # "skipped", "no history", "ok", "regressed"
    action: str  # "warn" or "fail"
    runs: int = 0  # prior runs compared with
    tolerance: float
    baseline: dict[str, float] = {}  # medians of the prior runs, by figure name
    current: dict[str, float] = {}
    change: dict[str, float] = {}  # current / baseline - 1
    problems: list[str] = []
    message: str = ""

    @property
    def failed(self) -> bool:
        """Regressed, and the run was asked to fail on a regression."""
        return self.status == "regressed" and self.action == "fail"


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
    warnings: list[str] = []  # figures a reader should not trust, and why (a busy host)
    regression: Regression | None = None
    fingerprint: str | None = None  # what must match for two runs' figures to be compared
    chart: str | None = None
    timeline: list[dict] = Field(default_factory=list, exclude=True)  # benchmark.json only

    @property
    def regression_failed(self) -> bool:
        """The run must fail: it regressed against earlier nights and regression_action is fail."""
        return self.regression is not None and self.regression.failed

    @classmethod
    def from_load(cls, result: LoadResult) -> BenchmarkResult:
        """Percentiles and errors of the measured requests; throughput from every answer in the
        window (each request is one pair, so one inference)."""
        requests = len(result.measured)
        return cls(
            requests_per_s=result.requests_per_s,
            inferences_per_s=result.requests_per_s,
            latency_ms=result.latency(),
            requests=requests,
            errors=result.errors,
            error_rate=result.errors / requests if requests else 0.0,
            concurrency=result.concurrency,
            seconds=result.seconds,
            mode=result.mode,
            rate=result.rate,
            first_error=result.first_error,
            timeline=result.timeline(),
        )
