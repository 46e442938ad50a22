import math

import pytest

from tasks.benchmark import summarize


def test_rates_and_percentiles():
    latencies = [i / 10 for i in range(1, 11)]  # 0.1 .. 1.0 s
    result = summarize(latencies, errors=0, concurrency=4, seconds=10.0)
    assert result.requests_per_s == pytest.approx(1.0)
    assert result.inferences_per_s == pytest.approx(1.0)
    assert result.latency_ms.p50 == pytest.approx(550.0)
    assert result.latency_ms.mean == pytest.approx(550.0)
    assert 900.0 <= result.latency_ms.p90 <= result.latency_ms.p99 <= 1000.0
    assert result.requests == 10 and result.errors == 0
    assert result.concurrency == 4 and result.seconds == 10.0


def test_errors_count_as_requests_but_not_throughput():
    result = summarize([0.2] * 20, errors=5, concurrency=2, seconds=4.0)
    assert result.requests == 25
    assert result.errors == 5
    assert result.requests_per_s == pytest.approx(5.0)
    assert result.latency_ms.p50 == pytest.approx(200.0)


def test_no_answers_gives_nan_latency_and_zero_rate():
    result = summarize([], errors=7, concurrency=8, seconds=10.0)
    assert result.requests_per_s == 0.0
    assert result.requests == 7
    for value in (result.latency_ms.p50, result.latency_ms.p90, result.latency_ms.p99, result.latency_ms.mean):
        assert math.isnan(value)


def test_zero_seconds_does_not_divide_by_zero():
    result = summarize([0.1], errors=0, concurrency=1, seconds=0.0)
    assert result.requests_per_s == 0.0
