"""How Prefect's engines log a failure: an expected one as its message and fix, a bug with its traceback; and
the run's own log as a file in its run directory (RunLogFile, flow.log).

A PipelineError (tasks/common/errors.py) is a failure a user acts on -- the input, the host -- and its text
already says what went wrong and what to do. Prefect's task and flow engines log every exception they end
a run on with its traceback (task_engine.py "Task run failed with exception: ...", flow_engine.py
"Encountered exception during execution: ...", both exc_info=True), so a typo in a path printed two
tracebacks, ~60 lines, above the one line that mattered. `ExpectedFailures` is a logging.Filter on the two
loggers those lines go to (prefect.task_runs, prefect.flow_runs): for a PipelineError -- or a StageFailed
carrying only PipelineErrors -- the record keeps Prefect's words with the error as "Type: message -- fix:
..." and loses the traceback, on the terminal and in the run's log alike (the filter runs before any
handler). Any other exception is a bug and keeps its traceback. Prefect's states are not touched: the run
is Failed with the same message either way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flows.stages import StageFailed
from tasks.common.errors import PipelineError

ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")
RUN_LOG = "flow.log"  # in the run directory: the run's log lines, as the terminal showed them


def expected(error: BaseException) -> bool:
    """A failure the user acts on: a PipelineError, or a StageFailed whose every carried error is one (its
    cause, and what was being handled when it was raised: a stop that failed after a bug keeps the bug's
    traceback)."""
    if isinstance(error, StageFailed):
        carried = [e for e in (error.__cause__, error.__context__) if e is not None]
        return bool(carried) and all(expected(e) for e in carried)
    return isinstance(error, PipelineError)


def said(error: BaseException) -> str:
    """The error as one line where its message is one line: "Type: message -- fix: ..."."""
    return f"{type(error).__name__}: {error}".replace("\nfix: ", " -- fix: ")


class ExpectedFailures(logging.Filter):
    """Drops the traceback of an engine's record about an expected failure (see the module's docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not expected(error):
            return True
        text = record.getMessage()
        # Prefect writes the exception as its repr ("TraceError('...\\nfix: ...')"): the plain text instead.
        record.msg = text.replace(repr(error), said(error)) if repr(error) in text else f"{text}: {said(error)}"
        record.args = ()
        record.exc_info, record.exc_text = None, None
        return True


def install_expected_failures() -> None:
    """Put the filter on Prefect's task-run and flow-run loggers, once (a flow module calls this on import)."""
    for name in ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, ExpectedFailures) for existing in logger.filters):
            logger.addFilter(ExpectedFailures())


class RunLogFile:
    """The run's log lines -- Prefect's and ours (get_run_logger's flow-run and task-run records, and any library's
    warning) -- also written to <run dir>/flow.log while the run lasts, so a night run by a worker, whose terminal
    nobody reads, leaves its log beside its summary. A handler on the root logger, where Prefect's console handler
    is (its logging.yml): every record the terminal shows reaches it, after ExpectedFailures has shortened it. Lines
    in Prefect's console format with the date, as a night crosses midnight. Before the run directory exists (the
    flow run's first line) and after the run's exit (Prefect's final state line) there is no file: those lines are
    in Prefect's own log of the flow run."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RUN_LOG
        self.handler: logging.Handler | None = None

    def attach(self) -> None:
        from prefect.logging.formatters import PrefectFormatter

        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(
            PrefectFormatter(
                "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
                flow_run_fmt="%(asctime)s.%(msecs)03d | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
                task_run_fmt="%(asctime)s.%(msecs)03d | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
            )
        )
        logging.getLogger().addHandler(handler)
        self.handler = handler

    def detach(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            self.handler = None
