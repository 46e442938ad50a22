"""Shared pieces of the end-to-end tests: a real Prefect server (SQLite), and process checks."""

import socket

import pytest
from prefect.testing.utilities import prefect_test_harness

from tasks.serve.register import RegisterError, register
from tasks.serve.server import Server, start, stop, wait_healthy


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect API server on loopback with its own SQLite database."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


def assert_server_gone(server: Server) -> None:
    """Every process the run recorded is gone and its ports can be bound again."""
    assert [ref.pid for ref in server.processes if ref.alive()] == []
    host = server.inference_url.rsplit("//", 1)[1].split(":")[0]
    for port in server.ports.values():
        with socket.socket() as probe:
            probe.bind((host, port))  # raises if something still listens


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
