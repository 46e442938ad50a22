"""Fault injection: fail the real pipeline at each stage, or interrupt it at a random instant, then prove no
TorchServe process is left, its ports are free, and the run still wrote its summary naming the stage."""

import importlib.util
import json
import os
import random

import pytest
from prefect.settings import PREFECT_API_URL

import flows.pipeline
from flows.pipeline import validate
from flows.stages import STAGES
from tasks.serve import server as server_stage
from tests.e2e.conftest import SMALL_SHAPE, assert_server_gone
from tools import interrupts

pytestmark = pytest.mark.e2e

SMALL = {
    **SMALL_SHAPE,
    "serving.free_ports": True,
    "serving.initial_workers": 1,
    "benchmark.concurrency": 4,
    "benchmark.duration": 1,
    "benchmark.warmup": 0,
    "benchmark.capacity.enabled": False,
}
SERVER_STAGES = ["start", "register", "check", "benchmark"]


# The stage -> the task the flow calls for it (flows/stages.py).
TASKS = {
    "trace": "trace_task",
    "archive": "package_task",
    "start": "start_task",
    "register": "deploy_task",
    "check": "check_task",
    "benchmark": "benchmark_task",
}


def _planted(stage):
    def fail(*args, **kwargs):
        if stage == "start":
            engine, *rest = args
            engine.start(*rest, **kwargs)  # the server is up, then the stage dies before returning it
        raise RuntimeError(f"planted fault in {stage}")

    return fail


@pytest.mark.parametrize("stage", ["trace", "archive", *SERVER_STAGES])
def test_a_failing_stage_fails_the_run_and_leaves_no_torchserve(
    stage, prefect_server, small_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(flows.pipeline, TASKS[stage], _planted(stage))
    state = validate(overrides={**SMALL, "runs_dir": str(tmp_path)}, return_state=True)
    assert state.is_failed()
    run_dir = tmp_path / "latest"
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {s["name"]: s for s in summary["stages"]}
    assert summary["status"] == "failed"
    assert status[stage]["status"] == "failed" and f"planted fault in {stage}" in status[stage]["error"]
    after = STAGES[STAGES.index(stage) + 1 : -1]
    assert all(status[name]["status"] == "skipped" for name in after)
    server = server_stage.load_record(run_dir / "server")
    if stage in SERVER_STAGES:
        assert status["stop"]["status"] == "ok"
        assert_server_gone(server)
    else:
        assert server is None and status["stop"]["status"] == "skipped"


def test_interrupts_at_random_instants_end_clean(small_model, prefect_server, tmp_path):
    """One uninterrupted small night from the command line, then one night interrupted each way -- Ctrl-C, Ctrl-C
    twice, SIGTERM to the group (a worker's cancel, systemd), SIGTERM to the process alone (`kill PID`) -- at an
    instant drawn at random: uniform over the night, or just after a task run ends, where Prefect sets up the next
    (a Ctrl-C there surfaced as Prefect's `ValueError: Task run is not set`). Each must end clean
    (tools/interrupts.py judge): exit within 30 s of the signal, nothing it started left, summary "interrupted"
    naming the stage, never a failure or a Prefect-internal error, the console's line telling the summary's
    truth. A new seed each run, printed: INTERRUPT_SEED=<seed> replays the same instants.

    A terminal's Ctrl-C runs start their own temporary Prefect server (flows/temporary_api.py: in a session of its
    own, so the Ctrl-C does not reach it); the SIGTERM runs report to the session's server, as a worker's do."""
    seed = int(os.environ.get("INTERRUPT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"INTERRUPT_SEED={seed}")
    rng = random.Random(seed)
    with_server = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    timeline = interrupts.reference(tmp_path, with_server)
    outcomes = []
    for index, how in enumerate(interrupts.HOWS, 1):
        chosen = interrupts.plan(rng, timeline, [how], ["night", "between"])
        env = with_server if how.startswith("sigterm") else None
        outcomes.append(interrupts.interrupt(chosen, tmp_path, index, env))
    report = interrupts.table(outcomes)
    print(report)
    assert all(each.clean for each in outcomes), f"INTERRUPT_SEED={seed}\n{report}\nlogs: {tmp_path}"


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve is not installed here: ./setup.sh --ray")
def test_a_ray_night_sigtermed_as_its_instance_starts_leaves_nothing(small_model, prefect_server, tmp_path):
    """SIGTERM to a Ray night's process group (a worker's cancel) 3 s into its start stage -- the head up, Ray's GCS,
    raylet and Serve's controller and proxy coming up -- judged as tools.interrupts judges every night: the
    instance stopped and the summary written within 20 s, the process gone within 30 s, nothing it started left
    (found by the instance's record, process group and marker too), the summary and the console saying so.
    (`python -m tools.interrupts --engine ray` draws the instants at random: docs/engines.md.)"""
    with_server = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    chosen = interrupts.Plan(how="sigterm", aim="between", after_task=3, delay=3.0)  # stop-stale, trace, archive
    outcome = interrupts.interrupt(chosen, tmp_path, 1, with_server, engine="ray")
    assert outcome.clean, f"{interrupts.table([outcome])}\nlogs: {tmp_path}"
    assert outcome.category == "interrupted" and outcome.stage == "start", interrupts.table([outcome])
    assert "Ray Serve stopped" in outcome.line
