"""Shared pieces of the end-to-end tests: a real Prefect server (SQLite), the models most tests serve
(traced once per session into its compile cache, tests/conftest.py), and process checks."""

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from tasks.common.config import load_config
from tasks.common.ports import listeners
from tasks.common.processes import group_members
from tasks.prepare.trace import TracedModel, trace
from tasks.serve.register import RegisterError, register
from tasks.serve.server import Server, start, stop, wait_healthy


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect API server on loopback with its own SQLite database."""
    with prefect_test_harness(server_startup_timeout=180):
        yield


# The shape a test serves when what it proves does not need the tutorial's 6 x 128: a graph of 2 x 32 is
# traced, loaded and answered in a fraction of the time. Pipeline runs at this shape (overrides
# serving.batch_size / serving.max_length, the default config's model and length buckets) and trace_small
# share one entry of the session's compile cache.
SMALL_BATCH, SMALL_LENGTH = 2, 32
SMALL_SHAPE = {"serving.batch_size": SMALL_BATCH, "serving.max_length": SMALL_LENGTH}
# The tutorial's shape with the default length buckets: what a default run traces.
DEFAULT_BATCH, DEFAULT_LENGTH = 6, 128


def trace_small(out_dir: Path) -> TracedModel:
    """What a run at the small shape traces, into out_dir, through the session's compile cache."""
    return trace(load_config(None, SMALL_SHAPE), "cpu", out_dir)


def trace_default(out_dir: Path) -> TracedModel:
    """What a default run traces (6 x 128, the default buckets), through the session's compile cache."""
    return trace(load_config(), "cpu", out_dir)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> TracedModel:
    """The small shape traced once per session: every later trace of it, in this process or in a pipeline
    it starts (a subprocess, a deployment's worker: they inherit BERT_COMPILE_CACHE), is a cache hit."""
    return trace_small(tmp_path_factory.mktemp("small-model"))


@pytest.fixture(scope="session")
def default_model(tmp_path_factory) -> TracedModel:
    """The default model and shapes traced once per session, for the runs and tests that need them."""
    return trace_default(tmp_path_factory.mktemp("default-model"))


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
