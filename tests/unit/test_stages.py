"""The stages' record and their Prefect policy (flows/stages.py)."""

import signal

import pytest
from prefect.exceptions import TerminationSignal

from flows import stages as stages_module
from flows.stages import Stages, retry_when_retryable
from tasks.serve.register import RegisterError
from tests.unit.fake_time import TimeOn


def test_stages_record_ok_failed_skipped_and_reraise(fake_clock, monkeypatch):
    monkeypatch.setattr(stages_module, "time", TimeOn(fake_clock))
    stages = Stages(["trace", "archive", "start"])
    with stages.run("trace"):
        fake_clock.advance(0.05)
    with pytest.raises(ValueError, match="bad archive"):
        with stages.run("archive"):
            raise ValueError("bad archive")
    records = {r["name"]: r for r in stages.as_list()}
    assert records["trace"]["status"] == "ok" and records["trace"]["seconds"] == 0.05
    assert records["trace"]["error"] is None
    assert records["archive"]["status"] == "failed"
    assert records["archive"]["error"] == "ValueError: bad archive"
    assert records["start"] == {
        "name": "start",
        "status": "skipped",
        "seconds": 0.0,
        "error": None,
        "reason": None,
        "engine": None,
    }
    assert [r.name for r in stages.failed()] == ["archive"]


def test_a_stage_skipped_on_purpose_says_why_and_is_no_failure():
    stages = Stages(["trace", "archive", "start"])
    stages.skip("trace", "--mar x.mar given")
    with stages.run("start"):
        pass
    records = {r["name"]: r for r in stages.as_list()}
    assert records["trace"]["status"] == "skipped" and records["trace"]["reason"] == "--mar x.mar given"
    assert records["archive"]["reason"] is None and stages.failed() == []
    assert [r["name"] for r in stages.as_list()] == ["trace", "archive", "start"]


def test_stages_record_a_base_exception_such_as_a_signal():
    class Terminated(BaseException):
        pass

    stages = Stages(["register"])
    with pytest.raises(Terminated):
        with stages.run("register"):
            raise Terminated("received signal 15")
    assert stages.records["register"].status == "failed"
    assert "received signal 15" in stages.records["register"].error


class _State:
    def __init__(self, error):
        self.error = error

    def result(self):
        raise self.error


def test_register_retries_only_retryable_errors():
    assert retry_when_retryable(None, None, _State(RegisterError("503", retryable=True))) is True
    assert retry_when_retryable(None, None, _State(RegisterError("400"))) is False
    assert retry_when_retryable(None, None, _State(KeyError("x"))) is False


@pytest.mark.parametrize(
    "signal_error", [KeyboardInterrupt(), TerminationSignal(signal.SIGTERM)], ids=["Ctrl-C", "SIGTERM"]
)
def test_a_stage_stopped_from_outside_is_recorded_as_interrupted_not_failed(signal_error):
    stages = Stages(["benchmark"])
    with pytest.raises(type(signal_error)):
        with stages.run("benchmark"):
            raise signal_error
    assert stages.records["benchmark"].status == "interrupted"
    assert stages.failed() == []


def test_a_night_of_two_engines_records_its_own_stages_once_and_each_engines_in_turn():
    """trace and archive once; start..stop once per engine, in the order the engines serve, each naming its
    engine -- a failure on one engine is that engine's, and the night's failed stages name it."""
    stages = Stages(engines=["torchserve", "ray"])
    with stages.run("trace"):
        pass
    with stages.run("start"):
        pass
    stages.begin("ray")
    with pytest.raises(ValueError):
        with stages.run("start"):
            raise ValueError("port taken")
    listed = [(r["name"], r["engine"], r["status"]) for r in stages.as_list()]
    assert listed[:3] == [("trace", None, "ok"), ("archive", None, "skipped"), ("start", "torchserve", "ok")]
    assert ("start", "ray", "failed") in listed and len(listed) == 2 + 2 * 6
    assert [(r.name, r.engine) for r in stages.failed()] == [("start", "ray")]
    assert stages.records["start"].engine == "ray"  # the current engine's
