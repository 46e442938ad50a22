"""TorchServe lifecycle against the real server: token auth, ping races, 409s, broken handlers,
taken ports, and servers left by a crashed run."""

import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from tasks.common.config import REPO_ROOT, ServingConfig
from tasks.common.sizing import resolve_serving
from tasks.prepare.archive import archive
from tasks.serve.register import describe, register
from tasks.serve.server import ServerError, find_stale, load_record, start, stop, stop_stale, wait_healthy
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH, assert_server_gone, register_refusal, trace_small

pytestmark = pytest.mark.e2e

SERVING = ServingConfig(
    batch_size=SMALL_BATCH, max_length=SMALL_LENGTH, max_batch_delay=20, free_ports=True, initial_workers=1
)
PAIR = {
    "seq_0": "The company HuggingFace is based in New York City",
    "seq_1": "HuggingFace's headquarters are situated in Manhattan",
}


@pytest.fixture(scope="module")
def traced(small_model, tmp_path_factory):
    return trace_small(tmp_path_factory.mktemp("model"))  # the session's small model: a cache hit


@pytest.fixture(scope="module")
def mar(traced, tmp_path_factory):
    return archive(traced, tmp_path_factory.mktemp("model_store"))


def _healthy_server(mar, server_dir):
    """A started, Healthy TorchServe on free ports; stopped whatever the test does."""
    server = start(SERVING, resolve_serving(SERVING), mar.model_store, server_dir)
    try:
        wait_healthy(server, timeout=120)
        yield server
    finally:
        stop(server)
        assert_server_gone(server)


@pytest.fixture
def served(mar, tmp_path):
    """A TorchServe of the test's own, for a test that must see it fresh (nothing registered yet)."""
    yield from _healthy_server(mar, tmp_path / "run" / "server")


@pytest.fixture(scope="module")
def shared(mar, tmp_path_factory):
    """One TorchServe for the tests that only read it, or register the model the same way on it."""
    yield from _healthy_server(mar, tmp_path_factory.mktemp("shared") / "run" / "server")


def _ready_workers(server, name):
    with server.management() as client:
        model = describe(client, name)
    return model, [w for w in model["workers"] if w["status"] == "READY"]


def test_ping_before_start_up_finished_is_refused_then_retried_until_healthy(mar, tmp_path):
    server = start(SERVING, resolve_serving(SERVING), mar.model_store, tmp_path / "server")
    try:
        # The race the tutorial left to the user: right after start there is nothing to answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.inference_url}/ping", timeout=2)
        waited = wait_healthy(server, timeout=120)
        assert waited > 0
        answer = httpx.get(f"{server.inference_url}/ping", headers=server.inference_headers(), timeout=5)
        assert answer.json()["status"] == "Healthy"
    finally:
        stop(server)
    assert_server_gone(server)


def test_key_file_is_readable_by_its_owner_only(shared):
    assert stat.S_IMODE(os.stat(shared.key_file).st_mode) == 0o600


def test_registering_twice_scales_to_the_wanted_workers_then_reregisters_on_new_batching(served, mar):
    first = register(served, mar, max_batch_delay=20, workers=1)
    assert first.action == "registered"
    second = register(served, mar, max_batch_delay=20, workers=2)
    assert second.action == "scaled existing"
    _, ready = _ready_workers(served, mar.model_name)
    assert len(ready) == 2
    third = register(served, mar, max_batch_delay=40, workers=1)
    assert third.action == "re-registered"
    model, ready = _ready_workers(served, mar.model_name)
    assert model["maxBatchDelay"] == 40 and len(ready) == 1


def _refused(answer):
    # TorchServe 0.12 refuses a missing or wrong token with 400 InvalidKeyException (not 401).
    return answer.status_code == 400 and answer.json()["type"] == "InvalidKeyException"


def test_no_token_or_wrong_token_is_refused_while_the_server_keeps_serving(shared, mar):
    register(shared, mar, max_batch_delay=20, workers=1)
    url = f"{shared.inference_url}/predictions/{mar.model_name}"
    assert _refused(httpx.post(url, data=PAIR, timeout=30))
    assert _refused(httpx.post(url, data=PAIR, headers={"Authorization": "Bearer wrong"}, timeout=30))
    assert _refused(httpx.get(f"{shared.inference_url}/ping", timeout=30))
    assert _refused(httpx.get(f"{shared.management_url}/models", timeout=30))
    # The inference key is not a management key.
    assert _refused(httpx.get(f"{shared.management_url}/models", headers=shared.inference_headers(), timeout=30))
    answer = httpx.post(url, data=PAIR, headers=shared.inference_headers(), timeout=30)
    assert answer.status_code == 200 and answer.json() == ["paraphrase"]


def test_a_handler_that_cannot_load_fails_register_with_its_traceback(traced, tmp_path, mar):
    broken = tmp_path / "broken_handler.py"
    broken.write_text(
        textwrap.dedent("""
        from ts.torch_handler.base_handler import BaseHandler

        class Broken(BaseHandler):
            def initialize(self, context):
                raise RuntimeError("planted failure: tokenizer files missing")
    """)
    )
    broken_mar = archive(traced, tmp_path / "broken_store", handler=broken)
    error = register_refusal(SERVING, resolve_serving(SERVING), broken_mar, tmp_path / "server")
    assert "planted failure: tokenizer files missing" in str(error)
    assert "Traceback" in str(error)
    assert error.retryable is False


def test_a_port_in_use_is_named_before_anything_starts(mar, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        serving = SERVING.model_copy(
            update={
                "free_ports": False,
                "inference_port": taken,
                "management_port": taken + 1,
                "metrics_port": taken + 2,
                "grpc_inference_port": taken + 3,
                "grpc_management_port": taken + 4,
            }
        )
        with pytest.raises(ServerError) as caught:
            start(serving, resolve_serving(serving), mar.model_store, tmp_path / "server")
    assert f"port {taken} on 127.0.0.1 is already in use" in str(caught.value)
    assert load_record(tmp_path / "server") is None  # nothing was started


def test_token_auth_off_is_an_explicit_choice_that_serves_legacy_clients(mar, tmp_path):
    legacy = SERVING.model_copy(update={"token_auth": False})
    assert any("token authorization is OFF" in w for w in legacy.security_warnings())
    server = start(legacy, resolve_serving(legacy), mar.model_store, tmp_path / "server")
    try:
        wait_healthy(server, timeout=120)
        register(server, mar, max_batch_delay=20, workers=1)
        answer = httpx.post(f"{server.inference_url}/predictions/{mar.model_name}", data=PAIR, timeout=30)
        assert answer.status_code == 200 and answer.json() == ["paraphrase"]
    finally:
        stop(server)
    assert_server_gone(server)


def test_a_server_left_by_a_crashed_run_is_found_and_stopped_at_the_next_start(mar, tmp_path):
    runs_dir = tmp_path / "runs"
    server_dir = runs_dir / "crashed-run" / "server"
    # A pipeline process that starts TorchServe and then dies without a chance to clean up.
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tasks.common.config import ServingConfig
        from tasks.common.sizing import resolve_serving
        from tasks.serve.server import start, wait_healthy
        serving = ServingConfig.model_validate_json({SERVING.model_dump_json()!r})
        server = start(serving, resolve_serving(serving), Path({str(mar.model_store)!r}), Path({str(server_dir)!r}))
        wait_healthy(server, 120)
        print("healthy", flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "healthy"
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    orphan = load_record(server_dir)
    assert any(ref.alive() for ref in orphan.processes), "TorchServe should have outlived its killed owner"
    try:
        assert [s.server_dir for s in find_stale(runs_dir)] == [server_dir]
        lines = stop_stale(runs_dir)
        assert len(lines) == 1 and str(server_dir) in lines[0]
    finally:
        stop(orphan)
    assert_server_gone(orphan)
    assert find_stale(runs_dir) == []


def test_a_server_whose_run_is_alive_is_not_stale(shared):
    runs_dir = shared.server_dir.parent.parent
    assert list(runs_dir.glob("*/server/server.json")) == [shared.server_dir / "server.json"]
    assert load_record(shared.server_dir).owner is not None
    assert find_stale(runs_dir) == []  # its owner (this test process) is alive: hands off


def test_a_frontend_that_ignores_the_graceful_stop_is_killed(mar, tmp_path):
    server = start(SERVING, resolve_serving(SERVING), mar.model_store, tmp_path / "server")
    wait_healthy(server, timeout=120)
    frontend = next(
        p
        for p in (ref.alive() for ref in server.processes)
        if p is not None and "org.pytorch.serve.ModelServer" in " ".join(p.cmdline())
    )
    frontend.suspend()  # SIGSTOP: it cannot act on SIGTERM
    result = stop(server, grace=2)
    assert frontend.pid in result.escalated and result.survivors == []
    assert_server_gone(server)


def test_a_ping_deadline_fails_with_the_torchserve_log_tail(mar, tmp_path):
    server = start(SERVING, resolve_serving(SERVING), mar.model_store, tmp_path / "server")
    try:
        with pytest.raises(ServerError) as caught:
            wait_healthy(server, timeout=0.5)
    finally:
        stop(server)
    assert_server_gone(server)
    message = str(caught.value)
    assert "did not answer /ping Healthy within" in message and "startup_timeout" in message
    assert "--- " in message and "logs" in message  # the log tail is attached


def test_a_torchserve_that_exits_during_start_up_fails_at_once_with_its_log(mar, tmp_path):
    server = start(SERVING, resolve_serving(SERVING), mar.model_store, tmp_path / "server")
    # The launcher leads its own process group: killing the group takes the frontend too, if it had started.
    os.killpg(server.processes[0].pid, signal.SIGKILL)
    started = time.monotonic()
    try:
        with pytest.raises(ServerError) as caught:
            wait_healthy(server, timeout=120)
    finally:
        stop(server)
    assert time.monotonic() - started < 30, "an exited TorchServe must not be waited for until the deadline"
    assert_server_gone(server)
    message = str(caught.value)
    assert "TorchServe exited during start-up" in message
    assert "--- " in message and "logs" in message  # the log tail is attached
    assert caught.value.fix
