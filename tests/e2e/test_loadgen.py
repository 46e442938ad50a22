"""The load generator on the real clock against the real TrivialEndpoint: what the client alone sustains.

A measurement of this host in real time (tests/unit/test_loadgen.py runs the load generator's logic in
virtual time), so it is end-to-end, not a unit test."""

import pytest

from tasks.measure.loadgen import Load, load
from tasks.measure.trivial_endpoint import TrivialEndpoint

pytestmark = pytest.mark.e2e

PAIRS = [(f"first sentence {i}", f"second sentence {i}") for i in range(10)]


def test_client_alone_sustains_far_more_than_a_served_model():
    # On a busy 2-core host the pipeline serves ~20 requests/s; the client alone must be far above.
    with TrivialEndpoint() as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=16, duration=1.0))
    assert result.errors == 0 and result.requests_per_s > 200
