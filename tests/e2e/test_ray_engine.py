"""The Ray Serve engine's own lifecycle, where a night does not reach: what its instance exposes while it runs, and
a crashed night's instance found and stopped by the next night's sweep.

Real Ray 2.60 and Serve, a real replica running the real deployment (serving/ray_deployment.py) on the session's
small model (2 x 32). Every check of the night, the benchmark with Serve's own figures, and the stop that leaves
nothing are the pipeline's (tests/e2e/test_pipeline.py, a `--engines torchserve,ray` night); replicas on distinct
NeuronCores, the Neuron stand-in's night (tests/e2e/test_neuron_stand_in.py). Skipped, saying why, where the
extra [ray] is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import psutil
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed here: the ray engine needs ./setup.sh --ray")

from tasks.common.config import ServingConfig  # after the skip: nothing below runs without Ray
from tasks.common.ports import listeners
from tasks.common.processes import ProcessRef
from tasks.common.sizing import resolve_serving
from tasks.engines import registry
from tasks.engines.ray import head
from tasks.engines.ray.engine import RayEngine
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH

pytestmark = pytest.mark.e2e

DELAY = 50  # ms
ENGINE = RayEngine()
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def test_an_instance_is_loopback_but_token_guarded_grpc_and_a_crashed_nights_is_stopped_by_the_next(
    small_model, tmp_path
):
    """Every listener of the instance is on loopback, except one per replica: Ray Serve 2.60's inter-deployment
    gRPC server, bound to [::]:0 with no setting to change it (ray-project/ray#64544), which refuses a caller
    without the token; no listener takes a job without it; the tokens are the run's alone (0600). Then the night's
    process dies: its record names an owner that is gone, and the next night's first stage (the sweep of every
    engine) stops the instance -- nothing of it left."""
    serving = ServingConfig(batch_size=SMALL_BATCH, max_length=SMALL_LENGTH, free_ports=True, initial_workers=1)
    runs = tmp_path / "runs"
    package = ENGINE.package(small_model, tmp_path / "model_store")
    started = ENGINE.start(serving, resolve_serving(serving), package, runs / "20261205-000000-dead" / "server")
    try:
        replicas = ENGINE.ready(started, ENGINE.deploy(started, package, DELAY, 1, timeout=240), timeout=60)
        _exposes_only_what_wants_the_token(started, [replica.pid for replica in replicas])
        assert _mode(started.endpoints.key_file) == _mode(started.token_file) == 0o600
        assert _mode(started.server_dir) == 0o700  # Ray's own directories in it are 0777
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        started.owner = ProcessRef(pid=gone.pid, create_time=0.0)  # the night's process, dead
        head.record(started)
        assert [s.server_dir for s in head.find_stale(runs)] == [started.server_dir]
        lines = registry.stop_stale(runs)
        assert len(lines) == 1 and "a Ray instance left by a crashed run" in lines[0], lines
    finally:
        if head.leftovers(started):  # the sweep did not get there
            ENGINE.stop(started)
    assert head.leftovers(started) == [] and listeners(started.ports.values()) == {}
    assert not started.temp_link.exists() and not started.token_file.exists()
    assert not any(psutil.pid_exists(replica.pid) for replica in replicas)


def _exposes_only_what_wants_the_token(started: head.RayStarted, replicas: list[int]) -> None:
    ours = {ref.pid for ref in head.marked(started.marker)}
    bound = [
        (c.laddr, c.pid) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    wide = [(address, pid) for address, pid in bound if address.ip not in LOOPBACK]
    assert sorted(pid for _, pid in wide) == sorted(replicas), bound
    for address, _ in wide:
        assert _grpc_refuses_without_a_token(address.port)
    # No listener takes a job without the token. (The agent serves its job endpoint on Ray's fixed port 52365 when
    # that port is free; when another instance -- or one that just stopped -- holds it, the agent serves none.)
    answers = {address.port: _job_submission(address.port) for address, _ in bound}
    assert not [port for port, status in answers.items() if status is not None and status < 400], answers
    assert answers.get(52365, 401) == 401, answers


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def _grpc_refuses_without_a_token(port: int) -> bool:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
    return refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _job_submission(port: int) -> int | None:
    """The HTTP status of a job submitted to Ray's job agent endpoint on `port` without a token; None: no HTTP."""
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/api/job_agent/jobs/", json={"entrypoint": "true"}, timeout=5)
    except httpx.HTTPError:
        return None
    return answer.status_code
