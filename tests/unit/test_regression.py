"""Regression against earlier runs: the medians, the tolerance, warn or fail, no history."""

import json

import pytest

from tasks.measure.benchmark import summarize
from tasks.measure.regression import check, compare, figures_of

NIGHTS = [{"inferences_per_s": v, "latency_ms p90": p} for v, p in ((20, 3000), (21, 2900), (19, 3100), (5, 9000))]


def test_no_history_says_so_and_passes():
    verdict = compare({"inferences_per_s": 20, "latency_ms p90": 3000}, [], 0.2, "fail")
    assert verdict.status == "no history" and not verdict.failed and "no earlier" in verdict.message


def test_within_tolerance_of_the_median_is_ok():
    verdict = compare({"inferences_per_s": 18.5, "latency_ms p90": 3300}, NIGHTS, 0.2)
    assert verdict.status == "ok" and verdict.runs == 4
    # The median shrugs off the one bad night (5 inferences/s).
    assert verdict.baseline == {"inferences_per_s": 19.5, "latency_ms p90": 3050}


def test_throughput_drop_past_tolerance_regresses():
    verdict = compare({"inferences_per_s": 15, "latency_ms p90": 3000}, NIGHTS, 0.2, "warn")
    assert verdict.status == "regressed" and not verdict.failed
    assert verdict.problems[0].startswith("inferences_per_s 15.0 vs median 19.5")
    assert verdict.change["inferences_per_s"] == pytest.approx(15 / 19.5 - 1)


def test_p90_rise_past_tolerance_regresses_and_fail_fails():
    verdict = compare({"inferences_per_s": 20, "latency_ms p90": 4000}, NIGHTS, 0.2, "fail")
    assert verdict.status == "regressed" and verdict.failed
    assert len(verdict.problems) == 1 and verdict.problems[0].startswith("latency_ms p90")


def test_faster_is_never_a_regression():
    verdict = compare({"inferences_per_s": 60, "latency_ms p90": 500}, NIGHTS, 0.2, "fail")
    assert verdict.status == "ok"


def test_history_rows_without_the_figures_are_ignored():
    verdict = compare({"inferences_per_s": 20, "latency_ms p90": 3000}, [{"inferences_per_s": 20}], 0.2)
    assert verdict.status == "no history"


def test_figures_of_reads_a_table_artifacts_data_as_the_api_returns_it():
    rows = [{"figure": "inferences_per_s", "value": 20.5}, {"figure": "fingerprint", "value": "abc"}]
    assert figures_of(json.dumps(rows)) == {"inferences_per_s": 20.5, "fingerprint": "abc"}
    assert figures_of(rows) == figures_of(json.dumps(rows))
    assert figures_of("not json") == {} and figures_of(None) == {}


def test_check_outside_a_flow_run_is_skipped_and_zero_runs_turns_it_off():
    bench = summarize([0.1], 0, 1, 1.0)
    assert check(bench, "abc", 5, 0.2, "fail").status == "skipped"
    off = check(bench, "abc", 0, 0.2, "fail")
    assert off.status == "skipped" and "0" in off.message


def test_check_compares_with_the_history_it_reads(monkeypatch):
    import tasks.measure.regression as regression

    monkeypatch.setattr(regression, "history", lambda fingerprint, limit: NIGHTS[:limit])
    bench = summarize([4.0] * 10, 0, 64, 1.0)  # 10 requests/s, p90 4000 ms
    verdict = check(bench, "abc", 3, 0.2, "fail")
    assert verdict.runs == 3 and verdict.status == "regressed" and verdict.failed


def test_an_unreadable_history_does_not_fail_the_benchmark(monkeypatch):
    import tasks.measure.regression as regression

    def broken(fingerprint, limit):
        raise ConnectionError("API down")

    monkeypatch.setattr(regression, "history", broken)
    verdict = check(summarize([0.1], 0, 1, 1.0), "abc", 5, 0.2, "fail")
    assert verdict.status == "skipped" and "API down" in verdict.message and not verdict.failed


def test_a_night_on_a_busy_host_is_no_baseline():
    from tasks.measure.regression import busy

    assert busy({"cpu other_cores": 0.9, "cpu host_cores": 2})
    assert not busy({"cpu other_cores": 0.05, "cpu host_cores": 2})
    assert not busy({})  # older nights without CPU figures still count
