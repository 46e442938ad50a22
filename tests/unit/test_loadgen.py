"""The load generator: closed and open loop, warm-up, counts, errors.

The loads run in virtual time (tests/unit/fake_time.py): on an event loop whose clock jumps to its next timer,
against a FakeEndpoint that answers as trivial_endpoint.TrivialEndpoint does after a set service time. So "a 1 s load"
takes no second, and its figures are exact, not a busy host's. One test drives the real TrivialEndpoint over
real HTTP (a count of requests, no timers), one a refused connection; what the client alone sustains on this
host is a real-time measurement, in tests/e2e/test_loadgen.py."""

import logging
import math
import socket
from urllib.parse import parse_qs

import numpy as np
import pytest

from tasks.measure.loadgen import Load, LoadResult, PairPool, Sample, Watch, arrival_times, load, percentiles
from tasks.measure.trivial_endpoint import TrivialEndpoint
from tests.unit.fake_time import FakeEndpoint, load_in_virtual_time

PAIRS = [(f"first sentence {i}", f"second sentence {i}") for i in range(10)]


@pytest.fixture
def clock(fake_clock, monkeypatch):
    """Loads on a fake clock, against FakeEndpoints."""
    load_in_virtual_time(monkeypatch, fake_clock)
    return fake_clock


def pairs_in(bodies: list[bytes]) -> list[tuple[str, str]]:
    return [tuple(parse_qs(body.decode())[k][0] for k in ("seq_0", "seq_1")) for body in bodies]


def test_closed_loop_measures_every_answer_and_draws_pairs_from_the_pool(clock):
    with FakeEndpoint(delay=0.01, record=True) as endpoint:
        result = load(endpoint.url, {"Authorization": "Bearer x"}, PAIRS, Load(concurrency=4, duration=0.5))
    assert result.mode == "closed" and result.concurrency == 4 and result.rate is None
    assert result.errors == 0 and len(result.measured) > 20 and result.warmup_requests == 0
    assert result.requests_per_s == pytest.approx(len(result.measured) / result.seconds, rel=0.1)
    assert result.seconds == 0.5
    assert set(pairs_in(endpoint.bodies)) == set(PAIRS)  # all of the pool, not one pair repeated
    assert {headers["authorization"] for headers in endpoint.headers} == {"Bearer x"}
    assert all(s.intended == s.sent and s.done >= s.sent for s in result.samples)


def test_a_real_trivial_endpoint_answers_the_load_over_http():
    """TrivialEndpoint itself (the benchmark's client check runs against it): real sockets, keep-alive
    connections, the form-encoded pairs; a count of requests, so no clock is involved."""
    with TrivialEndpoint(record=True) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=3, requests=30))
        served = endpoint.served
    assert len(result.measured) == 30 == served and result.errors == 0 and result.first_error is None
    assert sorted(pairs_in(endpoint.bodies)) == sorted(PAIRS * 3)  # the pool, round-robin
    assert all(s.ok and s.done >= s.sent for s in result.samples)


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight(clock):
    # A serial endpoint with a 50 ms service time: 4 clients queue behind each other,
    # so each sees 4 x 50 ms once all four are in, and throughput is the endpoint's 20/s.
    with FakeEndpoint(delay=0.05, serial=True) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=4, requests=24))
    assert len(result.measured) == 24
    lat = result.latency()
    assert sorted(s.latency for s in result.samples)[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])  # the first four
    assert lat.p50 == pytest.approx(200) and lat.max == pytest.approx(200)
    assert result.requests_per_s == pytest.approx(20)


def test_request_count_instead_of_duration(clock):
    with FakeEndpoint(delay=0.01) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=3, requests=17, duration=1000))
    assert len(result.measured) == 17
    assert result.seconds == pytest.approx(0.06)  # six rounds of 3 clients, the last answer's time: not 1000 s


def test_warmup_requests_are_sent_but_not_measured(clock):
    with FakeEndpoint() as endpoint:
        # A count of measured requests, not a duration: a slow first answer on a busy host cannot
        # leave the measured window empty.
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=2, requests=5, warmup=0.3))
        served = endpoint.served
    assert served == len(result.samples) > len(result.measured) == 5
    assert result.warmup_requests == served - len(result.measured)
    assert min(s.intended for s in result.measured) >= 0
    assert max(s.intended for s in result.samples if not s.measured) < 0


def test_throughput_counts_answers_in_the_window_so_the_warm_pipeline_is_not_lost(clock):
    # 4 clients on a serial 50 ms endpoint: 20 answers/s. Counting only requests sent after the
    # warm-up over a window that starts at the warm-up's end would miss the answers to requests
    # already in flight then, and read low by about one latency (200 ms of 1.2 s here).
    with FakeEndpoint(delay=0.05, serial=True) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=4, duration=1.0, warmup=0.5))
    assert result.requests_per_s == pytest.approx(20, rel=0.12)
    # The old estimate (measured requests over warm-up end -> last answer) reads low:
    assert len(result.ok) / max(s.done for s in result.ok) < 0.9 * result.requests_per_s


def test_open_loop_sends_at_the_rate_asked(clock):
    with FakeEndpoint(delay=0.01) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(mode="open", rate=40, concurrency=8, duration=1.0))
    assert result.mode == "open" and result.rate == 40
    assert len(result.measured) == 40
    starts = sorted(s.intended for s in result.measured)
    assert np.diff(starts) == pytest.approx(np.full(len(starts) - 1, 1 / 40), abs=1e-9)
    assert all(s.sent == s.intended for s in result.measured)  # a connection was free for each: sent on time
    assert result.latency().p50 == pytest.approx(10)


def first(times, count: int) -> np.ndarray:
    return np.array([next(times) for _ in range(count)])


def test_poisson_arrivals_have_exponential_gaps_at_the_rate_and_repeat_with_their_seed():
    gaps = np.diff(first(arrival_times(50.0, "poisson", seed=7), 20001))
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1 (fixed intervals: 0)
    assert np.mean(gaps > 3 / 50) == pytest.approx(math.exp(-3), abs=0.01)  # the bursts' quiet gaps, as often
    seeded = [list(first(arrival_times(50.0, "poisson", seed=seed), 50)) for seed in (7, 7, 8)]
    assert seeded[0] == seeded[1] != seeded[2]
    assert list(first(arrival_times(50.0), 4)) == [0.0, 0.02, 0.04, 0.06]


def test_an_open_loop_with_poisson_arrivals_sends_on_the_seeded_schedule(clock):
    with FakeEndpoint() as endpoint:
        result = load(
            endpoint.url, {}, PAIRS, Load(mode="open", rate=40, arrivals="poisson", seed=3, concurrency=8, duration=1.0)
        )
    assert result.arrivals == "poisson"
    schedule = [t for t in first(arrival_times(40, "poisson", seed=3), 200) if t < 1.0]
    assert sorted(s.intended for s in result.samples) == pytest.approx(schedule, abs=1e-9)


def test_open_loop_latency_counts_the_queue_from_the_intended_send_time(clock):
    # The endpoint serves 20/s one at a time; we ask 40/s over one connection. A closed-loop view
    # (from the real send) sees ~50 ms per request; from the intended time the wait grows steadily.
    with FakeEndpoint(delay=0.05, serial=True) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(mode="open", rate=40, concurrency=1, duration=1.0))
    service = percentiles([s.service for s in result.samples])
    latency = result.latency()
    assert service.p50 < 80
    assert latency.p50 > 300 and latency.max > 700
    ordered = sorted(result.samples, key=lambda s: s.intended)
    assert ordered[-1].latency > ordered[0].latency + 0.5  # the queue builds up


def test_http_errors_are_counted_with_the_first_error_kept(clock):
    with FakeEndpoint(status=503) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=2, duration=0.2))
    assert result.errors == len(result.measured) > 0
    assert result.requests_per_s == 0
    assert result.first_error.startswith("HTTP 503")
    assert math.isnan(result.latency().p50)


def test_connection_refused_is_an_error_not_a_crash():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = load(f"http://127.0.0.1:{port}/", {}, PAIRS, Load(concurrency=2, requests=4))
    assert result.errors == 4 and "ConnectError" in result.first_error


def test_progress_lines_go_to_the_log(caplog, clock):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test-progress")
    with FakeEndpoint() as endpoint:
        load(
            endpoint.url,
            {},
            PAIRS,
            Load(concurrency=2, duration=0.65),
            Watch(progress_every=0.2, log=log, label="bench"),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "test-progress"]
    assert len(lines) == 3  # at 0.2, 0.4 and 0.6 s
    assert all(line.startswith("bench ") and "requests/s" in line and "p90" in line for line in lines)


def test_bad_arrivals_are_refused():
    with pytest.raises(ValueError, match="arrivals"):
        Load(mode="open", rate=1, arrivals="bursty")


def test_bad_mode_or_rate_is_refused():
    with pytest.raises(ValueError, match="mode"):
        Load(mode="sideways")
    with pytest.raises(ValueError, match="rate"):
        Load(mode="open", rate=None)


def test_percentiles_in_ms_and_nan_when_empty():
    lat = percentiles([i / 100 for i in range(1, 101)])  # 10 .. 1000 ms
    assert lat.p50 == pytest.approx(505.0)
    assert lat.p90 == pytest.approx(901.0)
    assert lat.p99 == pytest.approx(990.1)
    assert lat.max == pytest.approx(1000.0) and lat.mean == pytest.approx(505.0)
    assert all(math.isnan(v) for v in percentiles([]).model_dump().values())


def test_timeline_bins_completions_per_second():
    samples = [
        Sample(-1, -1, -0.5, True, False),
        Sample(-0.5, -0.5, 0.5, True, False),
        Sample(0, 0, 0.9, True),
        Sample(1, 1, 1.2, False),
        Sample(1, 1, 1.5, True),
    ]
    result = LoadResult(mode="closed", concurrency=1, rate=None, seconds=2, samples=samples)
    rows = result.timeline()
    assert [r["t"] for r in rows] == [1.0, 2.0]
    assert [r["requests_per_s"] for r in rows] == [2, 1]
    assert [r["errors"] for r in rows] == [0, 1]
    assert rows[0]["p50_ms"] == pytest.approx(950.0)
    assert result.answered == 3 and result.requests_per_s == 1.5  # the warm-up answer at 0.5 s counts
    assert result.errors == 1 and len(result.ok) == 2 and result.warmup_requests == 2


def test_pair_pool_is_shuffled_once_and_cycles():
    pool = PairPool(PAIRS)
    first = [pool.next() for _ in range(10)]
    assert sorted(first) == sorted(PAIRS) and first != PAIRS
    assert [pool.next() for _ in range(10)] == first
    assert PairPool(PAIRS).pairs == pool.pairs  # seeded: the same order every run
    with pytest.raises(ValueError):
        PairPool([])


def test_the_drain_after_the_window_does_not_dilute_throughput(clock):
    # A lone last request waits for batch-mates (like max_batch_delay) long after the window: its
    # latency is measured, but the wait is not spread over the window's throughput.
    with FakeEndpoint(delay=0.4) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(concurrency=1, duration=1.0))
    assert result.seconds == 1.0
    assert result.requests_per_s == pytest.approx(2.0)  # answers at 0.4 and 0.8 s; the third at 1.2 s is out
    assert len(result.measured) == 3 and result.latency().max >= 400


def test_a_window_shorter_than_a_request_runs_on_until_enough_came_back_and_is_that_long(clock):
    """A 1 s window on a server that takes 2.5 s per answer (a busy host) holds no answer: 0/s, a model that
    seemed to serve nothing. With at_least, the window runs on until that many came back, and is that long."""
    with FakeEndpoint(delay=2.5) as endpoint:
        short = load(endpoint.url, {}, PAIRS, Load(concurrency=2, duration=1.0))
        enough = load(endpoint.url, {}, PAIRS, Load(concurrency=2, duration=1.0, at_least=2))
    assert short.requests_per_s == 0.0 and short.seconds == 1.0
    assert enough.seconds == pytest.approx(2.5) and enough.answered == 2
    assert enough.requests_per_s == pytest.approx(2 / 2.5)  # 2 clients, 2.5 s each: the server's true rate
    with FakeEndpoint(delay=0.1) as endpoint:  # enough came back well inside the window: it is as asked
        quick = load(endpoint.url, {}, PAIRS, Load(concurrency=2, duration=1.0, at_least=2))
    assert quick.seconds == 1.0 and quick.requests_per_s == pytest.approx(20, rel=0.1)


def test_an_open_loops_window_is_its_schedules_whatever_at_least_says(clock):
    with FakeEndpoint(delay=2.5) as endpoint:
        offered = load(endpoint.url, {}, PAIRS, Load(mode="open", rate=4.0, concurrency=8, duration=1.0, at_least=8))
    assert offered.seconds == 1.0 and len(offered.measured) == 4


def test_a_window_that_never_gets_enough_back_ends_within_its_timeout(clock):
    with FakeEndpoint(delay=0.2, status=503) as endpoint:  # answers, all errors: they count as come back
        failing = load(endpoint.url, {}, PAIRS, Load(concurrency=1, duration=1.0, at_least=3))
    assert failing.seconds == 1.0 and failing.errors > 0
    with FakeEndpoint(delay=50.0) as endpoint:  # nothing back for far longer than the timeout allows
        stuck = load(endpoint.url, {}, PAIRS, Load(concurrency=1, duration=1.0, at_least=3, timeout=5.0))
    assert stuck.seconds <= 1.0 + 5.0 and stuck.answered == 0


def test_throughput_per_window_and_the_latency_histogram():
    # 10 answers per s for 3 s, then 30 in the 4th: the windows show the jump.
    samples = [Sample(0.0, 0.0, t / 10 + 0.01, True) for t in range(30)]
    samples += [Sample(3.0, 3.0, 3.0 + t / 30 + 0.001, True) for t in range(30)]
    result = LoadResult(mode="closed", concurrency=4, rate=None, seconds=4.5, samples=samples)
    assert result.windows(1.0) == [10.0, 10.0, 10.0, 30.0]  # the last half second is no whole window
    edges, counts = result.histogram(bins=5)
    assert len(edges) == 6 and sum(counts) == 60 and edges[0] == pytest.approx(1.0)


def test_open_loop_with_a_bounded_backlog_drops_what_cannot_wait_and_counts_late_requests(clock):
    # 20/s served one at a time, 80/s asked over one connection with room for 2 waiting: most are dropped.
    with FakeEndpoint(delay=0.05, serial=True) as endpoint:
        result = load(endpoint.url, {}, PAIRS, Load(mode="open", rate=80, concurrency=1, duration=1.0, max_backlog=2))
    assert result.dropped > 20 and result.errors == 0
    assert result.late(0.01) >= 2  # those that waited for the connection
    assert all(s.measured and not s.ok for s in result.samples if s.dropped)
    assert len(result.ok) + result.dropped == len(result.measured)
