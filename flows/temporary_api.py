"""The Prefect API of a `python -m flows.validate` run when PREFECT_API_URL is not set: a server of the run's own.

Left to itself, Prefect starts a temporary server (its SubprocessASGIServer) as a child in the terminal's
process group, so the terminal's Ctrl-C stopped it together with the run: the run's last states, logs and
events had nowhere to go, and at exit Prefect's events worker drains its queue with no time bound, each event
retrying its connection about 11 times with 1 s sleeps (exits of 6 s and 22.6 s measured). This is the same
server -- Prefect's own API app under uvicorn, as Prefect launches it, on loopback, on Prefect's own database
($PREFECT_HOME, so earlier nights stay comparable) -- but in a session of its own: a Ctrl-C reaches the run and
not its API, so an interrupted run still records its end. It ends with the command: stopped once the run's
events and logs are delivered (each queue's drain bounded), and if the command is killed, by the kernel
(PR_SET_PDEATHSIG), so it never outlives the run.

    with temporary_api():          # a no-op where PREFECT_API_URL is set (a worker's run, a server of yours)
        validate(...)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx

from flows.interrupts import WATCH
from tasks.common.errors import PipelineError
from tasks.common.polling import TimedOut, wait_until
from tasks.common.processes import end

# What Prefect's SubprocessASGIServer sets for the server it starts (prefect 3.9.1, server/api/server.py): the UI
# off, the API marked as a temporary one. tests/unit/test_temporary_api.py compares this with Prefect's own.
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# At least this long for the server to answer: Prefect's own default (20 s) is too short for a busy 2-core host,
# where a start took 24 s; a larger PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is honoured.
STARTUP_S = 90.0
DRAIN_S = 10.0  # per queue (events, logs): what a run's last moments send takes well under this
INTERRUPTED_DRAIN_S = 3.0  # after a signal: the exit is bounded (a worker kills at 30 s), the summary is on disk
STOP_S = 5.0  # the server's graceful exit, as Prefect allows its own


class TemporaryApiError(PipelineError):
    """The run's temporary Prefect API server could not be started."""


def server_command(port: int) -> list[str]:
    """Prefect's API app under uvicorn, as Prefect starts its temporary server."""
    import prefect

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


@contextlib.contextmanager
def temporary_api() -> Iterator[str | None]:
    """A Prefect API for the block: PREFECT_API_URL's where it is set, else a temporary server of our own;
    yields the URL of the one started (None when PREFECT_API_URL is set)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    env = {**os.environ, **SERVER_ENV, **get_current_settings().to_environment_variables(exclude_unset=True)}
    server = subprocess.Popen(
        server_command(port),
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the terminal's Ctrl-C is for the run, not for its API
        preexec_fn=_die_with_parent,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_answering(server, url, max(STARTUP_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                drain(DRAIN_S if WATCH.sync() is None else INTERRUPTED_DRAIN_S)
    finally:
        end(server, grace=STOP_S)


def drain(timeout: float = DRAIN_S) -> None:
    """Deliver what Prefect still holds to send -- events, then logs -- each within `timeout` s."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=timeout)


def _wait_answering(server: subprocess.Popen, url: str, timeout: float) -> None:
    def answering() -> bool:
        if server.poll() is not None:
            raise TemporaryApiError(
                f"the temporary Prefect API server exited with code {server.returncode} before answering",
                fix="read its output above; or run a Prefect server and set PREFECT_API_URL",
            )
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answering, timeout, "the temporary Prefect API server to answer", first=0.1, factor=1.0)
    except TimedOut:
        raise TemporaryApiError(
            f"the temporary Prefect API server did not answer at {url} within {timeout:g} s",
            fix="raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy host, or set PREFECT_API_URL",
        ) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:  # looked up here, not between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM it when the thread that started it ends (Linux), so a
    killed command leaves no server behind. Elsewhere a no-op."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
