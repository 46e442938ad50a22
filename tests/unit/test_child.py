"""tasks/common/child.py: work in a short-lived child process, its result or its error back in the caller, as
the ceiling and the compile use it. The child here (tests/unit/child_work.py) imports nothing heavy."""

import logging

import pytest

from tasks.common import child
from tasks.common.config import REPO_ROOT
from tasks.common.errors import PipelineError

MODULE = "tests.unit.child_work"


class StageError(PipelineError):
    """The caller's own error class."""


class CoreRefused(PipelineError):
    """The caller's class for the child's CoreRefused: matched by name."""


def test_the_result_comes_back_and_the_child_gets_the_env_given_and_this_checkout(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("CHILD_TEST_VALUE", "inherited")
    result = child.run(
        MODULE,
        {"echo": [1, "two"]},
        StageError,
        logging.getLogger("stage"),
        env={"CHILD_TEST_VALUE": "given", "PATH": "/usr/bin:/bin"},
    )
    assert result["echo"] == [1, "two"] and result["env"] == "given"  # the env given, not this process's
    assert result["cwd"] == str(REPO_ROOT) and str(REPO_ROOT) in result["path"]
    assert "[child_work] a line for the stage's log" in caplog.text  # its stderr, in the stage's log
    assert "[child_work] a compiler's line on stdout" in caplog.text  # and its stdout


def test_the_childs_lines_are_logged_under_the_callers_prefect_settings():
    """Prefect's log handler sends a record to the API of the settings where it is logged: the child's lines go to
    the run's own API (the command line's temporary server, set in its context, not in the environment), never
    to a Prefect server of no context's (Prefect then starts one of its own for them)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    seen: list[str | None] = []

    class ApiOfTheRecord(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(PREFECT_API_URL.value())

    log = logging.getLogger("stage-of-a-run")
    log.addHandler(handler := ApiOfTheRecord())
    log.setLevel(logging.INFO)
    try:
        with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
            child.run(MODULE, {"echo": 1}, StageError, log)
    finally:
        log.removeHandler(handler)
    assert len(seen) == 2 and set(seen) == {"http://127.0.0.1:9/api"}


def test_a_pipeline_error_in_the_child_is_raised_as_the_callers_class_with_its_message_and_fix():
    with pytest.raises(StageError) as caught:
        child.run(MODULE, {"do": "refuse"}, StageError)
    assert (caught.value.message, caught.value.fix, caught.value.retryable) == (
        "no NeuronCore is free",
        "free one",
        True,
    )


def test_a_known_kind_of_error_is_raised_as_the_callers_class_of_that_name():
    with pytest.raises(CoreRefused, match="NeuronCore 1 is held by pid 42") as caught:
        child.run(MODULE, {"do": "refuse-known"}, StageError, known=(CoreRefused,))
    assert caught.value.fix == "stop pid 42"


def test_a_bug_in_the_child_reaches_the_caller_with_its_message():
    with pytest.raises(StageError, match="KeyError: 'model_files'"):
        child.run(MODULE, {"do": "bug"}, StageError)


def test_a_child_that_dies_without_a_result_says_its_exit_code_and_last_lines():
    with pytest.raises(StageError, match="exited with code 3 and no result\n.*a line for the stage's log") as caught:
        child.run(MODULE, {"do": "die"}, StageError)
    assert "negative code is the signal" in caught.value.fix
