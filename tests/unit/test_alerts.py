"""The alert Automations (deployments/alerts.py): what triggers each, and what its message says."""

import signal
from datetime import timedelta
from types import SimpleNamespace
from uuid import uuid4

from prefect.exceptions import TerminationSignal
from prefect.server.utilities.user_templates import _sync_template_environment

from flows.cli import _interrupted, _signal_of
from tasks.report.events import REGRESSED
from tests.scripts import deployments_script


def test_failed_crashed_regressed_and_one_missed_night_watch_per_active_deployment():
    alerts = deployments_script("alerts")
    gpu = uuid4()
    found = {a.name: a for a in alerts.automations(uuid4(), {"nightly-gpu": gpu})}
    failed = found["bert-validation: run failed or crashed"].trigger
    assert failed.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert found["bert-validation: benchmark regressed"].trigger.expect == {REGRESSED}
    missed = found["bert-validation: missed night nightly-gpu"].trigger
    assert missed.posture == "Proactive" and missed.within == timedelta(hours=26)
    assert missed.expect == {"prefect.flow-run.Completed"}
    assert missed.match_related.root == {"prefect.resource.id": f"prefect.deployment.{gpu}"}


def test_the_failure_message_names_deployment_run_stage_first_error_line_and_link():
    alerts = deployments_script("alerts")
    state = SimpleNamespace(
        name="Failed",
        message="Flow run encountered an exception: StageFailed: stage start "
        "failed: ServerError: no ping\nfix: read the log",
    )
    context = {
        "flow_run": SimpleNamespace(name="quirky-doberman", state=state),
        "flow": SimpleNamespace(name="f"),
        "deployment": SimpleNamespace(name="nightly-cpu-embedded"),
    }
    environment = _sync_template_environment.overlay()
    environment.filters["ui_url"] = lambda run: "http://127.0.0.1:4200/runs/flow-run/1"
    body = environment.from_string(alerts.FAILED_BODY).render(context)
    assert "deployment: nightly-cpu-embedded" in body and "run: quirky-doberman" in body
    assert "\nstage and error: stage start failed: ServerError: no ping\n" in body and "fix:" not in body
    assert "link: http://127.0.0.1:4200/runs/flow-run/1" in body
    subject = environment.from_string(alerts.FAILED_SUBJECT).render(context)
    assert subject == "Failed: nightly-cpu-embedded / quirky-doberman"


def test_an_interruption_is_found_behind_the_error_prefect_raised_while_reporting_it():
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ConnectionError("the temporary API server is gone")  # noqa: B904 -- implicitly, as Prefect does
    except ConnectionError as error:
        assert _signal_of(error) == signal.SIGINT
    assert _signal_of(TerminationSignal(signal.SIGTERM)) == signal.SIGTERM
    assert _signal_of(ValueError("plain")) is None


def test_the_ctrl_c_line_says_what_the_run_said_it_stopped_and_no_more(tmp_path):
    run_dir = tmp_path / "20261124-000000-abcdef"
    run_dir.mkdir()
    summary = run_dir / "summary.json"
    summary.write_text(
        '{"status": "interrupted", "interrupted": {"by": "Ctrl-C (SIGINT)", "during": "during benchmark",'
        ' "server": "TorchServe stopped (3 processes)", "stopped": {"stopped": 3}}}'
    )
    assert _interrupted(run_dir, signal.SIGINT) == (
        f"interrupted: Ctrl-C (SIGINT) during benchmark: TorchServe stopped (3 processes); summary: {summary}"
    )
    summary.write_text('{"status": "ok", "interrupted": null}')
    assert _interrupted(run_dir, signal.SIGTERM).startswith(
        "interrupted by SIGTERM (a cancellation or a stopped job) after the run ended (status ok)"
    )
    summary.unlink()  # no summary: whether TorchServe was stopped is unknown, and the line does not guess
    line = _interrupted(run_dir, signal.SIGINT)
    assert "is missing or unreadable" in line and "unknown" in line and f"python -m flows.stop {run_dir}" in line
    assert _interrupted(None, signal.SIGINT) == "interrupted by Ctrl-C (SIGINT) before the run started: nothing to stop"
