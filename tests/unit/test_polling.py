"""wait_until: the one polling loop behind every wait (TorchServe's /ping, workers READY, the local Prefect server)."""

import pickle

import pytest

from tasks.common import polling
from tasks.common.errors import PipelineError
from tasks.common.polling import Pending, TimedOut, wait_until
from tests.unit.fake_time import TimeOn


@pytest.fixture
def clock(fake_clock, monkeypatch):
    """tasks.common.polling's time.monotonic / time.sleep on a fake clock that records every sleep: exact
    deadlines, no waiting."""
    monkeypatch.setattr(polling, "time", TimeOn(fake_clock))
    return fake_clock


def test_returns_the_checks_value_as_soon_as_it_passes(clock):
    answers = iter([None, Pending("HTTP 503"), {"status": "Healthy"}, "never reached"])
    assert wait_until(lambda: next(answers), timeout=60, what="ping") == {"status": "Healthy"}
    assert len(clock.sleeps) == 2


def test_a_check_that_passes_at_once_never_sleeps(clock):
    assert wait_until(lambda: True, timeout=60, what="ping") is True
    assert clock.sleeps == []


def test_sleeps_back_off_up_to_the_most(clock):
    with pytest.raises(TimedOut):
        wait_until(lambda: False, timeout=10, what="ping", first=0.2, factor=2, most=1.0)
    assert clock.sleeps[:5] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_gives_up_at_the_deadline_and_never_sleeps_past_it(clock):
    with pytest.raises(TimedOut):
        wait_until(lambda: False, timeout=3, what="ping", first=2.0, factor=1.0)
    # 2 s, then only the 1 s left; the last check runs at the deadline itself.
    assert clock.sleeps == [2.0, 1.0]
    assert clock.now == 3.0


def test_a_check_called_at_the_deadline_can_still_pass(clock):
    answers = iter([False, False, "ready"])
    assert wait_until(lambda: next(answers), timeout=1.0, what="workers", first=0.5, factor=1.0) == "ready"
    assert clock.now == 1.0


def test_the_timeout_names_what_it_waited_for_how_long_and_the_last_state_seen(clock):
    states = iter([Pending("no key file yet"), Pending("ConnectError"), Pending("HTTP 503")])
    with pytest.raises(TimedOut) as caught:
        wait_until(lambda: next(states), timeout=0.5, what="TorchServe to answer /ping Healthy", first=0.25, factor=1.0)
    message = str(caught.value)
    assert "TorchServe to answer /ping Healthy" in message and "0.5 s" in message and "HTTP 503" in message
    assert (caught.value.what, caught.value.timeout, caught.value.last) == (
        "TorchServe to answer /ping Healthy",
        0.5,
        "HTTP 503",
    )
    assert isinstance(caught.value, PipelineError)


def test_an_error_raised_by_the_check_ends_the_wait_at_once(clock):
    def exited():
        raise RuntimeError("TorchServe exited during start-up")

    with pytest.raises(RuntimeError, match="exited during start-up"):
        wait_until(exited, timeout=60, what="ping")
    assert clock.sleeps == []


def test_a_timeout_survives_pickling_as_prefect_does_with_task_errors():
    error = pickle.loads(pickle.dumps(TimedOut("workers READY", 2.0, "['UNLOADING']", fix="read the log")))
    assert (error.what, error.timeout, error.last, error.fix) == ("workers READY", 2.0, "['UNLOADING']", "read the log")
    assert str(error).endswith("\nfix: read the log")


def test_a_first_sleep_longer_than_the_timeout_is_cut_to_the_deadline(clock):
    with pytest.raises(TimedOut):
        wait_until(lambda: False, timeout=0.3, what="nothing", first=5.0)  # a naive loop would sleep 5 s
    assert clock.sleeps == [pytest.approx(0.3)] and clock.now == pytest.approx(0.3)
