"""A night's benchmark result made to order, for the tests of what reads them (figures, regression, trend)."""

from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult


def night(served: float, latency_s: float, **more) -> BenchmarkResult:
    """A benchmark whose every request took latency_s, at `served` inferences/s."""
    return BenchmarkResult(
        requests_per_s=served,
        inferences_per_s=served,
        latency_ms=percentiles([latency_s] * 10),
        requests=10,
        errors=0,
        concurrency=4,
        seconds=10 / served,
        **more,
    )
