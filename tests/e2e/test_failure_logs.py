"""Prefect's own engines, for real: a run that fails on a PipelineError logs its message and fix without a
traceback (flows/logs.py), a run that fails on a bug logs the bug's traceback; the Failed state and its
message are Prefect's either way."""

import logging

import pytest
from prefect import task

import flows.pipeline
from flows.pipeline import validate
from tasks.prepare.trace import TraceError

pytestmark = pytest.mark.e2e

SMALL = {"serving.batch_size": 2, "serving.max_length": 32, "serving.free_ports": True, "serving.initial_workers": 1}


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.mark.parametrize(
    "planted, traceback",
    [
        (TraceError("no such directory /models/bert", fix="give an existing checkpoint directory"), False),
        (ZeroDivisionError("division by zero"), True),
    ],
)
def test_the_engines_log_an_expected_failure_without_a_traceback_and_a_bug_with_one(
    planted, traceback, prefect_server, tmp_path, monkeypatch
):
    def fail(*args, **kwargs):
        raise planted

    monkeypatch.setattr(flows.pipeline, "trace_task", task(fail, name="trace"))
    kept = Kept()
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.flow_runs")]
    for logger in loggers:
        logger.addHandler(kept)
    try:
        state = validate(overrides={**SMALL, "runs_dir": str(tmp_path)}, return_state=True)
    finally:
        for logger in loggers:
            logger.removeHandler(kept)
    assert state.is_failed()
    assert state.message.startswith(
        f"Flow run encountered an exception: StageFailed: stage trace failed: {type(planted).__name__}: {planted}"
    )  # Prefect's message, unchanged
    errors = [line for line in kept.lines if " ERROR " in line.split("\n")[0]]
    task_line = next(line for line in errors if "Task run failed with exception" in line)
    flow_line = next(line for line in errors if "Encountered exception during execution" in line)
    for line in (task_line, flow_line):
        assert ("Traceback (most recent call last)" in line) is traceback, line
    if not traceback:
        assert task_line.endswith(
            "TraceError: no such directory /models/bert -- fix: give an existing checkpoint directory"
        )
        assert "-- fix: give an existing checkpoint directory" in flow_line
    # The run's own log file says the same, the same way (flows/logs.py RunLogFile).
    in_file = (tmp_path / "latest" / "flow.log").read_text()
    assert "Task run failed with exception" in in_file
    assert ("Traceback (most recent call last)" in in_file) is traceback
