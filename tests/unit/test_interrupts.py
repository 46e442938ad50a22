"""flows/interrupts.py: the interrupt watch, in a process of its own (tests/unit/interrupted_night.py) that the test
signals as a terminal or a worker would. What a user would notice: the interruption recorded with the stage it
came in, whatever exception carried it; a swallowed one delivered again; a stuck night stopped, written and
ended by the backstop; a run's exit never cut short; the temporary API server started as Prefect starts its own."""

import json
import os
import signal
import subprocess
import sys

import pytest

from flows import stages as stages_module
from flows.interrupts import Arrival, Watch
from flows.stages import Stages
from tasks.common.config import REPO_ROOT


class Night:
    """The scenario's process and what it said, a JSON object a line."""

    def __init__(self, scenario: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.unit.interrupted_night", scenario],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def said(self) -> list[dict]:
        """Every line it says until it ends (the test's bound: 20 s)."""
        out, _ = self.process.communicate(timeout=20)
        return [json.loads(line) for line in out.splitlines()]

    def next(self) -> dict:
        return json.loads(self.process.stdout.readline())


@pytest.mark.parametrize("signum, vehicle", [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, "SystemExit")])
def test_a_signal_is_recorded_with_the_stage_it_came_in_and_its_own_exception_ends_the_stage(signum, vehicle):
    night = Night("stage")
    night.signal(signum)
    (said,) = night.said()
    assert said["vehicle"] == vehicle and said["signum"] == signum and said["stage"] == "benchmark"
    assert said["arrivals"] == 1
    assert night.process.returncode == 0


def test_a_swallowed_interruption_is_delivered_again_and_counted_once():
    """asyncio swallowed a SIGTERM raised inside its transport ("Fatal write error on socket transport") and the
    run measured on: the watch delivers the signal again until the run begins its exit."""
    night = Night("swallow")
    night.signal(signal.SIGTERM)
    first, again = night.said()
    assert first["vehicle"] == again["vehicle"] == "SystemExit"
    assert first["arrivals"] == again["arrivals"] == 1  # the watch's own delivery is not a second signal


def test_a_night_that_never_ends_is_stopped_written_and_ended_by_the_backstop():
    night = Night("stuck")
    night.signal(signal.SIGINT)
    steps = [line["step"] for line in night.said() if "step" in line]
    # at its deadlines: TorchServe stopped, the summary written; at the last, both made sure and the state set
    assert steps[:2] == ["stop_now", "summary"] and steps[-1] == "end_state"
    assert night.process.returncode == 128 + signal.SIGINT


def test_a_shielded_exit_records_signals_raises_nothing_and_a_second_one_kills_torchserve_now():
    night = Night("shielded")
    night.signal(signal.SIGINT)
    night.signal(signal.SIGTERM)
    said = night.said()
    assert {"step": "stop_now", "grace": 0.0} in said
    assert sorted(said[-1]["arrivals"]) == [signal.SIGINT, signal.SIGTERM]
    assert night.process.returncode == 0


def test_an_exception_that_ends_a_stage_after_a_signal_is_the_interruption_whatever_its_type(monkeypatch):
    """Prefect's task engine turned a Ctrl-C during its set-up into `ValueError: Task run is not set`: the stage
    was recorded as failed with Prefect's error, and the run as failed."""
    watch = Watch()
    watch.arrivals.append(Arrival(signum=signal.SIGINT, at=0.0, wall=0.0, stage="start", after="archive"))
    monkeypatch.setattr(stages_module, "WATCH", watch)
    stages = Stages(["start"])
    with pytest.raises(ValueError), stages.run("start"):
        raise ValueError("Task run is not set")
    assert stages.records["start"].status == "interrupted"
    assert stages.records["start"].error == "interrupted by Ctrl-C (SIGINT)"
    assert stages.failed() == []


def test_without_a_signal_a_stage_fails_with_its_own_error(monkeypatch):
    monkeypatch.setattr(stages_module, "WATCH", Watch())
    stages = Stages(["start"])
    with pytest.raises(ValueError), stages.run("start"):
        raise ValueError("port taken")
    assert stages.records["start"].status == "failed" and stages.records["start"].error == "ValueError: port taken"


def test_the_temporary_api_server_is_started_as_prefect_starts_its_own(monkeypatch):
    """The same command and environment as Prefect's SubprocessASGIServer (bar the port and the session): a Prefect
    upgrade that changes how it starts its temporary server fails here, not on a user's night."""
    from prefect.server.api import server as prefect_server

    from flows.temporary_api import SERVER_ENV, server_command

    started = {}

    def popen(args, env, **options):
        started.update(args=args, env=env)

    monkeypatch.setattr(prefect_server.subprocess, "Popen", popen)
    prefect_server.SubprocessASGIServer(port=4999)._run_uvicorn_command()
    prefect_server.SubprocessASGIServer._instances.pop(4999, None)
    assert started["args"] == server_command(4999)
    assert {key: started["env"][key] for key in SERVER_ENV} == SERVER_ENV


def test_a_stop_that_fails_in_the_shielded_exit_of_an_interrupted_run_is_a_failure_not_the_signal(monkeypatch):
    """No signal raises inside the run's shielded exit, so an error there is the stage's own: TorchServe
    processes that survived SIGKILL must read as a failed stop, not as an interruption."""
    watch = Watch()
    watch.arrivals.append(Arrival(signum=signal.SIGTERM, at=0.0, wall=0.0, stage="benchmark", after="check"))
    watch.shielding = 1
    monkeypatch.setattr(stages_module, "WATCH", watch)
    stages = Stages(["stop"])
    with pytest.raises(RuntimeError), stages.run("stop"):
        raise RuntimeError("TorchServe processes [42] survived SIGKILL")
    assert stages.records["stop"].status == "failed" and "survived SIGKILL" in stages.records["stop"].error
