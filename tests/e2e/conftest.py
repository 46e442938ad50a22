"""Shared pieces of the end-to-end tests: a real Prefect server (SQLite), and process checks."""

import pytest
from prefect.testing.utilities import prefect_test_harness

from tasks.common.ports import listeners
from tasks.common.processes import group_members
from tasks.serve.register import RegisterError, register
from tasks.serve.server import Server, start, stop, wait_healthy


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect API server on loopback with its own SQLite database."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


def assert_server_gone(server: Server) -> None:
    """Every process the run recorded is gone, and its launcher's process group with them (a Java whose
    launcher died is in no record), and nothing listens on its ports."""
    assert [ref.pid for ref in server.processes if ref.alive()] == []
    assert group_members(server.processes[0]) == []
    assert listeners(server.ports.values()) == {}


def register_refusal(serving, resolved, mar, server_dir) -> RegisterError:
    """Start a real TorchServe, expect registering `mar` to fail, stop it; return the error."""
    server = start(serving, resolved, mar.model_store, server_dir)
    try:
        wait_healthy(server, timeout=120)
        with pytest.raises(RegisterError) as caught:
            register(server, mar, max_batch_delay=20, workers=1, timeout=120)
    finally:
        stop(server)
    assert_server_gone(server)
    return caught.value
