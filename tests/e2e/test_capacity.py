"""The capacity search over real HTTP, on a server whose latency curve is known: one that answers one request
at a time in 20 ms (an M/D/1 queue of 50 requests/s). Below ~70 % of that its p99 stays far under the bound;
at its rate and above, the queue grows without limit. Real time, so it is marked e2e; it asserts only what
holds with margins wide enough for a busy host."""

from __future__ import annotations

import pytest

from tasks.measure.capacity import Search, poisson_steps
from tasks.measure.trivial_endpoint import TrivialEndpoint

pytestmark = pytest.mark.e2e

SERVICE_S = 0.02  # one request at a time: 50 requests/s at most
BOUND_MS = 400.0
PAIRS = [("a sentence", "another sentence")] * 10


def test_the_search_finds_the_capacity_of_a_server_with_a_known_curve_and_a_higher_step_that_failed():
    with TrivialEndpoint(delay=SERVICE_S, serial=True) as endpoint:
        measure = poisson_steps(endpoint.url, {}, PAIRS, concurrency=16, bound_ms=BOUND_MS, percentile=99, warmup=0.5)
        capacity = Search(
            measure, bound_ms=BOUND_MS, min_step_seconds=3, beyond=2, budget_seconds=40, step_overhead_s=0.5
        ).run(start_rate=1 / SERVICE_S)
    assert capacity.arrivals == "poisson" and capacity.percentile == 99
    assert capacity.steps[0].rate == 50.0 and not capacity.steps[0].passed  # saturated: the queue only grows
    assert capacity.rate is not None and 25 <= capacity.rate < 50  # ~70 % of the service rate passes
    assert capacity.failed_rate is not None and capacity.failed_rate > capacity.rate
    # The curve decides each step: far below the service rate it passes, at or above it the queue grows and it fails.
    assert all(step.passed for step in capacity.steps if step.rate <= 0.5 / SERVICE_S)
    assert not any(step.passed for step in capacity.steps if step.rate >= 1 / SERVICE_S)
    assert max(s.rate for s in capacity.steps if s.passed) == capacity.rate
