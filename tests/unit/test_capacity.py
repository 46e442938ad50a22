"""The capacity search on servers whose latency curve is known exactly (no load is sent: each step's
percentile comes from the curve), and its step-length rule."""

from __future__ import annotations

import math

import pytest

from tasks.measure.capacity import Capacity, CapacityStep, Search, step_seconds

SERVICE_RATE = 100.0  # requests/s


def mm1_p99_ms(rate: float) -> float:
    """An M/M/1 queue's p99 sojourn time: -ln(0.01) / (mu - lambda); infinite at or past saturation."""
    return -math.log(0.01) / (SERVICE_RATE - rate) * 1000 if rate < SERVICE_RATE else math.inf


def known_server(curve, errors_from: float = math.inf):
    """A measure callback: the curve's percentile at the rate, errors from `errors_from` requests/s up."""
    asked = []

    def measure(rate: float, seconds: float) -> CapacityStep:
        asked.append((rate, seconds))
        p99 = curve(rate)
        errors = int(rate >= errors_from)
        return CapacityStep(
            rate=rate,
            achieved=min(rate, SERVICE_RATE),
            seconds=seconds,
            requests=int(rate * seconds),
            p50=p99 / 4,
            p90=p99 / 2,
            p99=p99,
            percentile_ms=p99,
            errors=errors,
            dropped=0,
            passed=p99 <= BOUND_MS and errors == 0,
        )

    measure.asked = asked
    return measure


BOUND_MS = 200.0
CAPACITY = SERVICE_RATE + math.log(0.01) / (BOUND_MS / 1000)  # where mm1_p99_ms(rate) == BOUND_MS: 76.97/s


def search(measure, **options) -> Capacity:
    options = {"bound_ms": BOUND_MS, "budget_seconds": 1000.0, **options}
    return Search(measure, **options).run(start_rate=SERVICE_RATE)


def test_the_search_encloses_the_known_capacity_within_its_precision():
    capacity = search(known_server(mm1_p99_ms), precision=0.05)
    assert capacity.rate is not None and capacity.failed_rate is not None
    assert capacity.rate <= CAPACITY < capacity.failed_rate
    assert (capacity.failed_rate - capacity.rate) / capacity.failed_rate <= 0.05
    assert capacity.stopped == "within 5%"
    assert all(step.passed == (step.rate <= CAPACITY) for step in capacity.steps)
    assert capacity.steps[0].rate == SERVICE_RATE  # it starts where the closed loop was


def test_it_needs_few_steps_from_the_closed_loops_rate():
    assert len(search(known_server(mm1_p99_ms), precision=0.1).steps) <= 4
    at_the_start = search(known_server(lambda rate: 100.0 if rate <= SERVICE_RATE else 5000.0), precision=0.1)
    assert [step.rate for step in at_the_start.steps] == [SERVICE_RATE, pytest.approx(SERVICE_RATE * 1.1)]


def test_a_step_with_errors_fails_however_fast_it_was():
    capacity = search(known_server(lambda rate: 1.0, errors_from=40.0), precision=0.05)
    assert capacity.rate < 40 <= capacity.failed_rate
    assert not any(step.passed for step in capacity.steps if step.errors)


def test_a_bound_no_rate_meets_is_said_and_reports_no_rate():
    capacity = search(known_server(lambda rate: 10_000.0), budget_seconds=1e6)
    assert capacity.rate is None and capacity.failed_rate is not None
    assert "no rate" in capacity.stopped and "met the bound" in capacity.stopped


def test_a_server_faster_than_the_start_is_bracketed_upwards():
    capacity = search(known_server(lambda rate: 50.0 if rate <= 180 else 500.0), precision=0.05)
    assert capacity.rate <= 180 < capacity.failed_rate
    assert capacity.steps[1].rate == pytest.approx(SERVICE_RATE * 1.05)  # up by the precision


def test_the_budget_ends_the_search_with_the_bracket_it_has():
    measure = known_server(mm1_p99_ms)
    capacity = search(measure, precision=0.001, min_step_seconds=10, budget_seconds=45, step_overhead_s=1)
    assert sum(seconds + 1 for _, seconds in measure.asked) <= 45
    assert capacity.rate <= CAPACITY < capacity.failed_rate
    assert capacity.stopped.startswith("budget spent")


def test_a_step_lasts_long_enough_for_its_percentile():
    assert step_seconds(rate=60, percentile=99, min_seconds=5, beyond=5) == pytest.approx(500 / 60)
    assert step_seconds(rate=1000, percentile=99, min_seconds=5, beyond=5) == 5  # the minimum duration
    assert step_seconds(rate=60, percentile=90, min_seconds=0, beyond=5) == pytest.approx(50 / 60)
    measure = known_server(mm1_p99_ms)
    search(measure, min_step_seconds=2)
    assert all(seconds == step_seconds(rate, 99, 2, 5) for rate, seconds in measure.asked)


def _result(rate: float, sent: int, answered: int, latency_s: float = 0.2, seconds: float = 10.0):
    from tasks.measure.loadgen import LoadResult, Sample

    samples = [
        Sample(i * seconds / sent, i * seconds / sent, i * seconds / sent + latency_s, i < answered)
        for i in range(sent)
    ]
    return LoadResult(mode="open", concurrency=8, rate=rate, seconds=seconds, samples=samples, arrivals="poisson")


def test_a_step_the_server_did_not_keep_up_with_fails_though_its_percentile_is_within_the_bound():
    from tasks.measure.capacity import step_of
    from tasks.measure.loadgen import LoadResult, Sample

    kept_up = step_of(_result(50.0, sent=500, answered=500), percentile=99, bound_ms=1000)
    assert kept_up.passed and kept_up.sent == 50.0 and kept_up.achieved == pytest.approx(49.0, abs=1.5)
    # The same sends, the last 60 answered 900 ms after they were sent (within the bound), so those sent in
    # the window's last 0.9 s are answered after it: the answers fell behind the sends.
    behind = [
        Sample(s.intended, s.sent, s.intended + (0.9 if i >= 440 else 0.2), True)
        for i, s in enumerate(_result(50.0, 500, 500).samples)
    ]
    step = step_of(LoadResult(mode="open", concurrency=8, rate=50.0, seconds=10.0, samples=behind), 99, 1000)
    assert step.percentile_ms == pytest.approx(900.0) and step.errors == step.dropped == 0
    assert step.achieved < 0.95 * step.sent and not step.passed
