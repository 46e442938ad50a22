"""A sweep's rows: a setting and the benchmark stage's own result for it, flattened as sweep.json's rows
have always been, and ranked within a p90 limit."""

import math

from tasks.measure.ceiling import Ceiling, NoCeiling
from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult, ServerTimes, Stat
from tasks.measure.sweep_rows import RANKINGS, Setting, SweepRow, rank, verdict

# sweep.json's `rows`, the table artifact's columns and the command's table: these keys, in this order
TABLE_KEYS = [
    "label",
    "batch_size",
    "workers",
    "threads_per_worker",
    "max_batch_delay",
    "concurrency",
    "requests_per_s",
    "inferences_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "errors",
    "error_rate",
    "ceiling_inferences_per_s",
    "served_over_ceiling",
    "lone_batch_ms",
    "worker_lone_batch_ms",
    "queue_ms_p50",
    "handler_ms_p50",
    "mean_batch_fill",
    "other_cores",
    "other_cores_ceiling",
    "capacity_per_s",
    "within_limit",
    "best",
]


def row(concurrency: int, inferences_per_s: float, p90_ms: float, errors: int = 0, **fields) -> SweepRow:
    latency = percentiles([p90_ms / 1000] * 4)
    bench = BenchmarkResult(
        requests_per_s=inferences_per_s,
        inferences_per_s=inferences_per_s,
        latency_ms=latency,
        requests=100,
        errors=errors,
        concurrency=concurrency,
        seconds=10.0,
        **fields,
    )
    setting = Setting(batch_size=2, workers=1, threads_per_worker=4, max_batch_delay=5, concurrency=concurrency)
    return SweepRow(setting=setting, benchmark=bench)


def ceiling(inferences_per_s: float) -> Ceiling:
    return Ceiling(
        batch_size=2,
        max_length=32,
        buckets=[32],
        threads=4,
        batches_per_s=inferences_per_s / 2,
        inferences_per_s=inferences_per_s,
        best_layout="1x4",
        batch_latency_ms=50.0,
        lone_batch_latency_ms=40.123,
        worker_lone_batch_latency_ms=45.0,
        other_cores=0.01234,
        layouts=[],
    )


def test_a_row_flattens_to_the_keys_sweep_json_has_always_had():
    measured = row(
        8,
        30.123,
        400.0,
        ceiling=ceiling(40.0),
        served_over_ceiling=30.123 / 40.0,
        server=ServerTimes(
            source="metrics", queue_ms=Stat(count=1, p50=12.34, p90=20.0, mean=13.0), mean_batch_fill=1.987
        ),
    )
    flat = measured.table_row()
    assert list(flat) == TABLE_KEYS
    assert flat["label"] == "b2 w1 d5 c8" and flat["inferences_per_s"] == 30.12 and flat["p90_ms"] == 400.0
    assert flat["ceiling_inferences_per_s"] == 40.0 and flat["served_over_ceiling"] == 0.753
    assert flat["lone_batch_ms"] == 40.1 and flat["other_cores_ceiling"] == 0.01
    assert flat["queue_ms_p50"] == 12.3 and flat["handler_ms_p50"] is None and flat["mean_batch_fill"] == 1.99
    assert flat["other_cores"] is None and flat["within_limit"] is False and flat["best"] is False


def test_a_row_without_a_measured_ceiling_has_none_of_its_figures():
    flat = row(8, 30.0, 400.0, ceiling=NoCeiling(unavailable="no graph")).table_row()
    assert flat["ceiling_inferences_per_s"] is None and flat["served_over_ceiling"] is None
    assert flat["lone_batch_ms"] is None and flat["worker_lone_batch_ms"] is None
    assert flat["other_cores_ceiling"] is None


def test_a_row_round_trips_through_json():
    measured = row(8, 30.0, 400.0, ceiling=ceiling(40.0))
    again = SweepRow.model_validate_json(measured.model_dump_json())
    assert again.label == measured.label and again.benchmark.measured_ceiling.inferences_per_s == 40.0


def test_the_ranking_is_by_a_named_key_ties_go_to_the_lower_p90_then_the_first():
    rows = [row(1, 40.0, 900.0), row(2, 40.0, 500.0), row(3, 40.0, 500.0)]
    assert [r.setting.concurrency for r in rank(rows, 1000.0, by="throughput")] == [2, 3, 1]
    assert [r.best for r in rows] == [False, True, False]
    assert set(RANKINGS) >= {"throughput"}


def test_a_row_with_no_throughput_never_qualifies():
    rows = [row(1, 0.0, math.nan)]
    assert rank(rows, None) == [] and rows[0].within_limit is False


def test_the_verdict_names_the_best_setting_and_the_limit():
    best = row(8, 30.04, 400.4)
    assert verdict(best, 2000.0) == "best within p90 <= 2000 ms: b2 w1 d5 c8 (30.0 inferences/s, p90 400 ms)"
    assert verdict(best, None) == "best: b2 w1 d5 c8 (30.0 inferences/s, p90 400 ms)"
    assert verdict(None, 2000.0) == "no configuration met the limit without errors"


def test_ranked_by_capacity_the_highest_rate_within_the_bound_wins_and_a_row_without_one_does_not_qualify():
    from tasks.measure.capacity import Capacity

    def with_capacity(row: SweepRow, rate: float | None) -> SweepRow:
        row.benchmark.capacity = Capacity(
            percentile=99,
            bound_ms=1000,
            rate=rate,
            failed_rate=None,
            start_rate=30.0,
            precision=0.1,
            stopped="within 10%",
            rule="",
            steps=[],
        )
        return row

    # the most throughput is not the most capacity, and a row whose every step failed does not qualify
    rows = [
        with_capacity(row(1, 40.0, 500.0), 22.0),
        with_capacity(row(2, 50.0, 500.0), 18.0),
        with_capacity(row(3, 60.0, 500.0), None),
    ]
    ranked = rank(rows, None, by="capacity")
    assert [r.capacity for r in ranked] == [22.0, 18.0] and ranked[0].best and not rows[2].within_limit
    assert verdict(ranked[0], None, by="capacity").startswith(
        f"best by capacity at p99 <= 1000 ms: {ranked[0].label} (22.0"
    )
    assert ranked[0].table_row()["capacity_per_s"] == 22.0
    assert set(RANKINGS) == {"throughput", "capacity"}
