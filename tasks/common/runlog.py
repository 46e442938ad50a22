"""The logger a stage writes to: Prefect's run logger inside a flow or task run (so the lines are in the
run's log in the UI and on the terminal), the standard library's outside one (unit tests, tools)."""

from __future__ import annotations

import logging

# What a stage logs to: either of the two below (Prefect's run logger is an adapter).
Log = logging.Logger | logging.LoggerAdapter


def stage_logger(name: str) -> Log:
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:
        pass
    return logging.getLogger(name)
