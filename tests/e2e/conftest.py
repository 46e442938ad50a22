"""Shared pieces of the end-to-end tests: a real Prefect server (SQLite), and process checks."""

import socket

import pytest
from prefect.testing.utilities import prefect_test_harness

from tasks.server import Server


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
