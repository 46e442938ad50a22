"""Regression against earlier runs: the medians, the tolerance, warn or fail, no history; which runs are
comparable (the fingerprint); one busy-host rule for the warning and for the baseline."""

import json

import pytest

from tasks.common.config import load_config
from tasks.common.sizing import resolve_serving
from tasks.measure import figures
from tasks.measure.busy_host import BUSY_SHARE, busy, busy_host_warnings
from tasks.measure.figures import CPU_HOST_CORES, CPU_OTHER_CORES, INFERENCES_PER_S, LATENCY_P90
from tasks.measure.fingerprint import fingerprint
from tasks.measure.history import figures_of
from tasks.measure.regression import check, compare
from tasks.measure.results import BenchmarkResult, CpuUse
from tests.nights import night

RATE, P90 = INFERENCES_PER_S.name, LATENCY_P90.name
NIGHTS = [{RATE: v, P90: p} for v, p in ((20, 3000), (21, 2900), (19, 3100), (5, 9000))]


def with_cpu(other_cores: float, host_cores: int) -> BenchmarkResult:
    return night(
        20.0,
        1.0,
        cpu=CpuUse(
            seconds=30.0,
            host_cores=host_cores,
            workers_cores=1.0,
            frontend_cores=0.1,
            client_cores=0.1,
            other_cores=other_cores,
        ),
    )


def test_no_history_says_so_and_passes():
    verdict = compare({RATE: 20, P90: 3000}, [], 0.2, "fail")
    assert verdict.status == "no history" and not verdict.failed and "no earlier" in verdict.message


def test_within_tolerance_of_the_median_is_ok():
    verdict = compare({RATE: 18.5, P90: 3300}, NIGHTS, 0.2)
    assert verdict.status == "ok" and verdict.runs == 4
    # The median shrugs off the one bad night (5 inferences/s).
    assert verdict.baseline == {RATE: 19.5, P90: 3050}


def test_throughput_drop_past_tolerance_regresses():
    verdict = compare({RATE: 15, P90: 3000}, NIGHTS, 0.2, "warn")
    assert verdict.status == "regressed" and not verdict.failed
    assert verdict.problems[0].startswith(f"{RATE} 15.0 vs median 19.5")
    assert verdict.change[RATE] == pytest.approx(15 / 19.5 - 1)


def test_p90_rise_past_tolerance_regresses_and_fail_fails():
    verdict = compare({RATE: 20, P90: 4000}, NIGHTS, 0.2, "fail")
    assert verdict.status == "regressed" and verdict.failed
    assert len(verdict.problems) == 1 and verdict.problems[0].startswith(P90)


def test_faster_is_never_a_regression():
    verdict = compare({RATE: 60, P90: 500}, NIGHTS, 0.2, "fail")
    assert verdict.status == "ok"


def test_history_rows_without_any_compared_figure_are_ignored():
    verdict = compare({RATE: 20, P90: 3000}, [{"fingerprint": "abc"}], 0.2)
    assert verdict.status == "no history"


def test_a_figure_older_nights_lack_is_compared_with_the_nights_that_have_it():
    verdict = compare({RATE: 20, P90: 3000, "accuracy": 0.70}, NIGHTS + [{"accuracy": 0.74}], 0.2)
    assert verdict.baseline["accuracy"] == 0.74 and verdict.status == "regressed"  # 4 points < 1 point allowed
    assert [row.figure for row in verdict.regressed] == ["accuracy"]


def test_figures_of_reads_a_table_artifacts_data_as_the_api_returns_it():
    rows = [{"figure": RATE, "value": 20.5}, {"figure": "fingerprint", "value": "abc"}]
    assert figures_of(json.dumps(rows)) == {RATE: 20.5, "fingerprint": "abc"}
    assert figures_of(rows) == figures_of(json.dumps(rows))
    assert figures_of("not json") == {} and figures_of(None) == {}


def test_check_outside_a_flow_run_is_skipped_and_zero_runs_turns_it_off():
    bench = night(10.0, 0.1)
    assert check(bench, "abc", 5, 0.2, "fail").status == "skipped"
    off = check(bench, "abc", 0, 0.2, "fail")
    assert off.status == "skipped" and "0" in off.message


def test_check_compares_this_runs_figures_with_the_history_it_reads(monkeypatch):
    import tasks.measure.regression as regression

    monkeypatch.setattr(regression, "history", lambda fingerprint, limit, suffix=None: NIGHTS[:limit])
    verdict = check(night(10.0, 4.0), "abc", 3, 0.2, "fail")  # 10 inferences/s, p90 4000 ms
    assert verdict.runs == 3 and verdict.status == "regressed" and verdict.failed
    assert verdict.current[RATE] == 10.0 and verdict.current[P90] == pytest.approx(4000.0)
    assert {row.figure for row in verdict.regressed} == {RATE, P90}


def test_an_unreadable_history_does_not_fail_the_benchmark(monkeypatch):
    import tasks.measure.regression as regression

    def broken(fingerprint, limit, suffix=None):
        raise ConnectionError("API down")

    monkeypatch.setattr(regression, "history", broken)
    verdict = check(night(10.0, 0.1), "abc", 5, 0.2, "fail")
    assert verdict.status == "skipped" and "API down" in verdict.message and not verdict.failed


def test_fingerprint_ignores_ports_and_log_cadence_but_not_batching():
    base = load_config()
    resolved = resolve_serving(base.serving)
    same = load_config(
        None,
        {
            "serving.free_ports": True,
            "serving.inference_port": 9999,
            "benchmark.progress_every": 1,
            "benchmark.regression_action": "fail",
        },
    )
    other = load_config(None, {"serving.max_batch_delay": 7})
    assert fingerprint(base, resolved) == fingerprint(same, resolved)
    assert fingerprint(base, resolved) != fingerprint(other, resolved)


# --- one busy-host rule -------------------------------------------------------------------------


def test_a_night_on_a_busy_host_is_no_baseline():
    assert busy({CPU_OTHER_CORES.name: 0.9, CPU_HOST_CORES.name: 2})
    assert not busy({CPU_OTHER_CORES.name: 0.05, CPU_HOST_CORES.name: 2})
    assert not busy({})  # older nights without CPU figures still count


@pytest.mark.parametrize("share, is_busy", [(BUSY_SHARE * 0.9, False), (BUSY_SHARE * 1.1, True)])
def test_the_busy_warning_and_the_baseline_filter_are_one_rule(share, is_busy):
    bench = with_cpu(other_cores=share * 4, host_cores=4)
    read_back = figures_of(json.dumps(figures.table_rows(bench)))  # as a later night reads tonight's artifact
    assert bool(busy_host_warnings(bench)) is is_busy
    assert busy(read_back) is is_busy


def test_the_busy_rule_counts_the_cpus_of_the_host_that_ran_not_of_this_one():
    # 2 cores of other work: busy on a 4-CPU host, not on a 64-CPU one, whatever machine reads the result.
    assert busy_host_warnings(with_cpu(2.0, 4)) and not busy_host_warnings(with_cpu(2.0, 64))


def test_a_busy_host_during_the_ceiling_is_called_out_separately():
    from tasks.measure.ceiling import Ceiling

    bench = with_cpu(0.0, 2)
    bench.ceiling = Ceiling(
        batch_size=6,
        max_length=128,
        buckets=[128],
        threads=2,
        batches_per_s=1.0,
        inferences_per_s=6.0,
        best_layout="all threads",
        batch_latency_ms=1.0,
        lone_batch_latency_ms=1.0,
        worker_lone_batch_latency_ms=1.0,
        other_cores=1.5,
        layouts=[],
    )
    warnings = busy_host_warnings(bench)
    assert len(warnings) == 1 and "ceiling" in warnings[0] and "1.50 of 2 CPUs" in warnings[0]


# --- every headline figure, alone --------------------------------------------------------------------

from tasks.measure.regression import COMPARED  # noqa: E402

TYPICAL = {
    "inferences_per_s": 68.0,
    "latency_ms p50": 900.0,
    "latency_ms p90": 1100.0,
    "latency_ms p99": 1300.0,
    "error_rate": 0.0,
    "model_load register_to_ready_s": 6.0,
    "memory total_rss_mib": 1200.0,
    "accuracy": 0.74,
    "served_over_ceiling": 0.82,
    "capacity rate": 60.0,
}
WORSE = {
    "inferences_per_s": 50.0,
    "latency_ms p50": 1200.0,
    "latency_ms p90": 1500.0,
    "latency_ms p99": 2000.0,
    "error_rate": 0.05,
    "model_load register_to_ready_s": 12.0,
    "memory total_rss_mib": 1500.0,
    "accuracy": 0.70,
    "served_over_ceiling": 0.65,
    "capacity rate": 40.0,
}  # a capacity that falls


def _nights(wobble: float = 0.01) -> list[dict]:
    """Five nights a little apart, as real nights are."""
    return [{name: value * (1 + wobble * k) for name, value in TYPICAL.items()} for k in (-2, -1, 0, 1, 2)]


def test_the_compared_figures_are_the_headline_and_the_configs_tolerances_name_them():
    from tasks.common.config import COMPARED_FIGURES

    assert tuple(c.figure.name for c in COMPARED) == COMPARED_FIGURES == tuple(TYPICAL)


@pytest.mark.parametrize("moved", list(WORSE))
def test_one_figure_worse_alone_is_flagged_and_no_other(moved):
    tonight = {**TYPICAL, moved: WORSE[moved]}
    verdict = compare(tonight, _nights(), 0.2, "fail", load_config().benchmark.regression_tolerances)
    assert verdict.status == "regressed" and verdict.failed
    assert [row.figure for row in verdict.regressed] == [moved]
    assert len(verdict.table) == len(COMPARED) and verdict.message.startswith(moved)


def test_a_change_inside_the_earlier_nights_own_spread_is_not_flagged():
    # Throughput that swings +-30 % night to night: tonight's -25 % is inside that noise, not a regression.
    noisy = [{RATE: v} for v in (50.0, 70.0, 90.0, 65.0, 75.0)]
    verdict = compare({RATE: 52.5}, noisy, 0.2)
    row = verdict.table[0]
    assert verdict.status == "ok" and row.relative == pytest.approx(-0.25) and row.allowed > row.tolerance * 70
    # The same drop against steady nights is flagged.
    steady = [{RATE: v} for v in (69.0, 70.0, 71.0, 70.0, 70.5)]
    assert compare({RATE: 52.5}, steady, 0.2).status == "regressed"


def test_per_figure_tolerances_are_validated_and_merged_with_the_defaults():
    from tasks.common.config import ConfigError

    config = load_config(None, {"benchmark.regression_tolerances": {"latency_ms p90": 0.05}})
    assert config.benchmark.regression_tolerances["latency_ms p90"] == 0.05
    assert config.benchmark.regression_tolerances["error_rate"] == 0.01  # the default kept
    with pytest.raises(ConfigError, match="no compared figure named \\['p90'\\]"):
        load_config(None, {"benchmark.regression_tolerances": {"p90": 0.1}})
