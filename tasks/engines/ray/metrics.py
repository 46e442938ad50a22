"""Ray Serve's own account of a load window, from Ray's metrics endpoint (Prometheus text, /metrics on loopback).

Ray's metrics are cumulative: histograms of counts per bucket with their sum, counters. So a window is the
difference of two scrapes, one at its start (mark) and one at its end (window); each process reports to the
endpoint once per METRICS_REPORT_MS (head.py), so the end waits for two reports before it reads. Counts are
exact. Everything else comes from the buckets: Ray records a histogram's observations at its buckets' midpoints
(ray/_private/telemetry/open_telemetry_metric_recorder.py), so a sum -- hence a mean -- is the midpoints', and
percentiles are estimated linearly inside the bucket a rank falls in, as Prometheus' histogram_quantile does;
a maximum is not known (NaN). The batch sizes are exact: head.py gives Serve's batch-size histogram a bucket per
size, so its counts are the number of batches of each size, and the fill their mean.

Where the time of one request goes (ray/serve/_private: request_ingress_metrics.py, request_router, replica.py,
batching.py):
    request_ms   ray_serve_http_request_latency_ms        the proxy: received -> answered
    queue_ms     ray_serve_request_router_fulfillment_time_ms  the router: waiting for a replica with room
    replica_ms   ray_serve_deployment_processing_latency_ms    the replica: batch wait + model + answer
    batch_wait_ms ray_serve_batch_wait_time_ms            per batch: the wait for batch-mates
    handler_ms   ray_serve_batch_execution_time_ms        per batch: tokenize + graph + labels
    batches      ray_serve_batches_processed
    batch_sizes  ray_serve_actual_batch_size             batches of each size, and mean_batch_fill
The proxy's own time is not one of them, and request_ms less the others would be a difference of means taken
from bucket midpoints (it came out negative): absent. TorchServe's handler phases (preprocess / model /
postprocess) have no Ray counterpart here and stay absent too.
"""

from __future__ import annotations

import math
import time

import httpx
from pydantic import BaseModel

from tasks.engines.ray.head import METRICS_REPORT_MS, RayStarted
from tasks.engines.seam import EngineError, Replica
from tasks.measure.results import ModelLoad, ServerTimes, Stat, WorkerLoad

HISTOGRAMS = {
    "request_ms": "ray_serve_http_request_latency_ms",
    "queue_ms": "ray_serve_request_router_fulfillment_time_ms",
    "replica_ms": "ray_serve_deployment_processing_latency_ms",
    "batch_wait_ms": "ray_serve_batch_wait_time_ms",
    "handler_ms": "ray_serve_batch_execution_time_ms",
    "batch_size": "ray_serve_actual_batch_size",  # a bucket per size (head.py): counts of each size, exact
}
BATCHES = "ray_serve_batches_processed"
# Labels that name the application or deployment a sample is of; a sample with none of them is the process's own.
OWNER_LABELS = ("application", "deployment", "app")
REPORTS_TO_WAIT = 2


class Histogram(BaseModel):
    """One cumulative histogram, summed over the label sets of one deployment: upper bound -> count at or below."""

    buckets: dict[float, float] = {}
    count: float = 0.0
    total: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        return Histogram(
            buckets={le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            count=self.count - earlier.count,
            total=self.total - earlier.total,
        )

    def quantile(self, q: float) -> float:
        if self.count <= 0:
            return math.nan
        rank, below, lower = q * self.count, 0.0, 0.0
        for le, cumulative in sorted(self.buckets.items()):
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # past the last finite bound: the bound is all that is known
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            below, lower = cumulative, le
        return lower

    def stat(self) -> Stat | None:
        if self.count <= 0:
            return None
        return Stat(
            count=int(round(self.count)),
            p50=self.quantile(0.5),
            p90=self.quantile(0.9),
            p95=self.quantile(0.95),
            p99=self.quantile(0.99),
            mean=self.total / self.count,
        )


class Scrape(BaseModel):
    """What one read of the endpoint said about one deployment: its histograms and batch counter."""

    at: float  # s since the epoch
    histograms: dict[str, Histogram] = {}
    batches: float = 0.0


def _ours(labels: dict, name: str) -> bool:
    owners = [labels[key] for key in OWNER_LABELS if labels.get(key)]
    return not owners or name in owners


def parse(text: str, model_name: str) -> Scrape:
    """The histograms and counter above, summed over the samples that are the deployment's (or no one's)."""
    from prometheus_client.parser import text_string_to_metric_families  # comes with Ray (and Prefect)

    wanted = {metric: key for key, metric in HISTOGRAMS.items()}
    scrape = Scrape(at=time.time(), histograms={key: Histogram() for key in HISTOGRAMS})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not _ours(sample.labels, model_name):
                continue
            base = sample.name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            if base in wanted:
                histogram = scrape.histograms[wanted[base]]
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    histogram.buckets[le] = histogram.buckets.get(le, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    histogram.count += sample.value
                elif sample.name.endswith("_sum"):
                    histogram.total += sample.value
            elif sample.name in (BATCHES, f"{BATCHES}_total"):
                scrape.batches += sample.value
    return scrape


def scrape(started: RayStarted, model_name: str) -> Scrape:
    try:
        answer = httpx.get(started.metrics_url, timeout=10.0)
        answer.raise_for_status()
    except httpx.HTTPError as error:
        raise EngineError(
            f"Ray's metrics endpoint {started.metrics_url} did not answer ({type(error).__name__}: {error})",
            fix="the Ray instance may have stopped: read server/logs/ray-head.out",
            retryable=True,
        ) from None
    return parse(answer.text, model_name)


def window(started: RayStarted, model_name: str, since: Scrape) -> ServerTimes:
    """Serve's figures from the mark `since` to now, once every process has reported what it saw until now."""
    time.sleep(REPORTS_TO_WAIT * METRICS_REPORT_MS / 1000)
    now = scrape(started, model_name)
    delta = {key: now.histograms[key].minus(since.histograms.get(key, Histogram())) for key in HISTOGRAMS}
    stats = {key: histogram.stat() for key, histogram in delta.items()}
    batches = int(round(now.batches - since.batches))
    by_size = sizes(delta["batch_size"])
    return ServerTimes(
        source=f"{started.metrics_url} (Ray Serve's Prometheus metrics, {now.at - since.at:.1f} s window)",
        request_ms=stats["request_ms"],
        queue_ms=stats["queue_ms"],
        replica_ms=stats["replica_ms"],
        batch_wait_ms=stats["batch_wait_ms"],
        handler_ms=stats["handler_ms"],
        handler_metric=HISTOGRAMS["handler_ms"],
        batches=batches,
        mean_batch_fill=fill(by_size),
        batch_sizes=by_size,
        note="means and percentiles from Ray's histogram buckets (counts exact, no maximum); the handler's "
        "preprocess / model / postprocess phases are TorchServe's and absent here",
    )


def sizes(histogram: Histogram) -> dict[int, int]:
    """{size: batches} from the batch-size histogram, whose buckets are the sizes 1..batch_size (head.py)."""
    found, below = {}, 0.0
    for le, cumulative in sorted(histogram.buckets.items()):
        if not math.isinf(le) and cumulative - below > 0:
            found[int(le)] = int(round(cumulative - below))
        below = cumulative
    return found


def fill(by_size: dict[int, int]) -> float | None:
    """Requests per batch, from the batches of each size."""
    batches = sum(by_size.values())
    return sum(size * count for size, count in by_size.items()) / batches if batches else None


def model_load(replicas: list[Replica], deploy_s: float | None) -> ModelLoad:
    """Per replica: its own start and model load (its record); deploy -> every replica RUNNING (the driver's wait)."""
    workers = [WorkerLoad(worker=f"replica pid {r.pid} ({r.unit})", worker_load_ms=r.load_ms) for r in replicas]
    loads = [r.load_ms for r in replicas if r.load_ms is not None]
    return ModelLoad(workers=workers, register_to_ready_s=deploy_s, worker_load_ms=max(loads) if loads else None)
