"""The PNG charts: a single run over time, a sweep per configuration."""

from tasks.measure.charts import sweep_chart, timeline_chart
from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult

PNG = b"\x89PNG\r\n\x1a\n"


def test_timeline_chart_is_a_png(tmp_path):
    bench = BenchmarkResult(
        requests_per_s=1.0,
        inferences_per_s=1.0,
        latency_ms=percentiles([0.1, 0.2, 0.3]),
        requests=4,
        errors=1,
        concurrency=4,
        seconds=3.0,
    )
    bench.timeline = [
        {"t": 1.0, "requests_per_s": 2, "p50_ms": 100.0, "p90_ms": 180.0, "errors": 0},
        {"t": 2.0, "requests_per_s": 1, "p50_ms": 300.0, "p90_ms": 300.0, "errors": 1},
    ]
    path = timeline_chart(bench, tmp_path / "benchmark.png")
    assert path.read_bytes().startswith(PNG)


def test_sweep_chart_is_a_png(tmp_path):
    rows = [
        {
            "label": "b2 w1 d10 c8",
            "inferences_per_s": 30.0,
            "p90_ms": 400.0,
            "within_limit": True,
            "best": True,
            "ceiling_inferences_per_s": 40.0,
        },
        {
            "label": "b6 w2 d50 c64",
            "inferences_per_s": 35.0,
            "p90_ms": 3000.0,
            "within_limit": False,
            "ceiling_inferences_per_s": None,
        },
    ]
    path = sweep_chart(rows, tmp_path / "sweep.png", 2000)
    assert path.read_bytes().startswith(PNG)


def test_capacity_chart_draws_the_steps_and_nothing_without_a_search(tmp_path):
    from tasks.measure.capacity import Capacity, CapacityStep
    from tasks.measure.charts import capacity_chart

    bench = BenchmarkResult(
        requests_per_s=1.0,
        inferences_per_s=1.0,
        latency_ms=percentiles([0.1]),
        requests=1,
        errors=0,
        concurrency=4,
        seconds=3.0,
    )
    assert capacity_chart(bench, tmp_path / "none.png") is None
    steps = [
        CapacityStep(
            rate=rate,
            achieved=rate,
            seconds=5,
            requests=500,
            p50=p99 / 3,
            p90=p99 / 2,
            p99=p99,
            percentile_ms=p99,
            errors=0,
            dropped=0,
            passed=p99 <= 1500,
        )
        for rate, p99 in ((60.0, 4000.0), (30.0, 300.0), (45.0, 900.0), (52.0, 2100.0))
    ]
    bench.capacity = Capacity(
        percentile=99,
        bound_ms=1500,
        rate=45.0,
        failed_rate=52.0,
        start_rate=60.0,
        precision=0.1,
        stopped="within 10%",
        rule="",
        steps=steps,
    )
    assert capacity_chart(bench, tmp_path / "capacity.png").read_bytes().startswith(PNG)
