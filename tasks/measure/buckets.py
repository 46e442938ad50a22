"""Length buckets against the single max_length graph, on the same traffic, in the same run.

The run's .mar carries a graph per bucket. A second registration of the same graphs with
model-config.yaml narrowing the handler to max_length only is the tutorial's way of serving;
the same pool of real pairs is sent to both, one after the other, with the same load settings.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from tasks.measure import loadgen as loadgen
from tasks.measure.benchmark import load_pool
from tasks.verify.checks import GENERIC, Inference

# Pairs of the pool sent to both registrations to compare labels (after the timed loads).
LABEL_SAMPLE = 120
LABEL_CLIENTS = 16


class BucketComparison(BaseModel):
    buckets: list[int]
    max_length: int
    pairs: str
    bucketed_inferences_per_s: float
    single_inferences_per_s: float
    speedup: float
    bucketed_p90_ms: float
    single_p90_ms: float
    seconds_each: float
    labels_compared: int
    labels_identical: int


def _answers(server, model_name: str, pairs: list[tuple[str, str]]):
    inference = Inference(server, model_name, list(GENERIC))
    try:
        return inference.send_all([(a, b, "") for a, b in pairs], "bucket comparison", LABEL_CLIENTS)
    finally:
        inference.close()


def single_bucket_model_name(model_name: str) -> str:
    return f"{model_name}-single-bucket"


def compare(server, model_name: str, buckets: list[int], max_length: int, config,
            log: logging.Logger | None = None) -> BucketComparison:
    """The same load against the bucketed model and its max_length-only twin; inferences/s of both."""
    log = log or logging.getLogger(__name__)
    settings = config.benchmark
    pairs, pool = load_pool(settings.pairs_file)
    options = dict(mode=settings.mode, concurrency=settings.concurrency, duration=settings.duration,
                   requests=settings.requests, rate=settings.rate, warmup=settings.warmup, progress_every=None)
    results = {}
    for name in (model_name, single_bucket_model_name(model_name)):
        url = f"{server.inference_url}/predictions/{name}"
        results[name] = loadgen.load(url, server.inference_headers(), pairs, **options)
        if results[name].errors:
            log.warning("bucket comparison: %d errors from %s", results[name].errors, name)
    bucketed, single = results[model_name], results[single_bucket_model_name(model_name)]
    sample = pairs[:LABEL_SAMPLE]
    labels = {name: [p.answer for p in _answers(server, name, sample)] for name in results}
    identical = sum(a == b for a, b in zip(*labels.values()))
    comparison = BucketComparison(
        buckets=buckets, max_length=max_length, pairs=pool,
        bucketed_inferences_per_s=bucketed.requests_per_s, single_inferences_per_s=single.requests_per_s,
        speedup=bucketed.requests_per_s / single.requests_per_s if single.requests_per_s else 0.0,
        bucketed_p90_ms=bucketed.latency().p90, single_p90_ms=single.latency().p90,
        seconds_each=bucketed.seconds, labels_compared=len(sample), labels_identical=identical,
    )
    log.info("length buckets %s: %.1f inferences/s vs %.1f with max_length %d only (%.2fx); p90 %.0f vs %.0f ms; "
             "labels identical on %d/%d pairs", buckets, comparison.bucketed_inferences_per_s,
             comparison.single_inferences_per_s, max_length, comparison.speedup, comparison.bucketed_p90_ms,
             comparison.single_p90_ms, identical, len(sample))
    return comparison


def publish(comparison: BucketComparison) -> None:
    """A table artifact of the comparison, beside the benchmark's."""
    from prefect.artifacts import create_table_artifact

    rows = [{"graphs": f"buckets {comparison.buckets}", "inferences_per_s": round(comparison.bucketed_inferences_per_s, 2),
             "p90_ms": round(comparison.bucketed_p90_ms, 1)},
            {"graphs": f"max_length {comparison.max_length} only", "inferences_per_s":
             round(comparison.single_inferences_per_s, 2), "p90_ms": round(comparison.single_p90_ms, 1)}]
    create_table_artifact(key="length-buckets", table=rows,
                          description=f"Same traffic ({comparison.pairs}): {comparison.speedup:.2f}x with buckets; "
                          f"labels identical on {comparison.labels_identical}/{comparison.labels_compared} pairs")
