"""The Ray Serve engine alone, for real: start -> deploy -> the check stage's checks and a short load from the
load generator -> stop, nothing of Ray left; on CPU and on the Neuron stand-in.

Real Ray 2.60 and Serve, real replicas running the real deployment (serving/ray_deployment.py) on the session's
small model (2 x 32): the check stage (tasks/verify/checks.run_checks) and the load generator run unchanged
against it, through the HTTP contract alone. Skipped, saying why, where the extra [ray] is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed here: the ray engine needs ./setup.sh --ray")

from serving.contract import CLASS_NAMES  # after the skip: nothing below runs without Ray
from tasks.common.config import REPO_ROOT, ChecksConfig, ServingConfig, load_config
from tasks.common.ports import listeners
from tasks.common.sizing import resolve_serving
from tasks.engines.ray import head
from tasks.engines.ray.engine import RayEngine
from tasks.measure import loadgen
from tasks.prepare.trace import trace
from tasks.verify.checks import run_checks
from tasks.verify.pairs import load_golden
from tests.e2e.conftest import SMALL_BATCH, SMALL_LENGTH, SMALL_SHAPE

pytestmark = pytest.mark.e2e

DELAY = 50  # ms: a partial batch waits this long for batch-mates
GOLDEN = load_golden(REPO_ROOT / "configs" / "golden_pairs.yaml")
ENGINE = RayEngine()


def serving_for(backend: str = "cpu") -> ServingConfig:
    return ServingConfig(batch_size=SMALL_BATCH, max_length=SMALL_LENGTH, free_ports=True, backend=backend)


def assert_nothing_left(started: head.RayStarted) -> None:
    """No process of the instance -- by record, process group or marker -- and nothing listens on its ports."""
    assert head.leftovers(started) == []
    assert listeners(started.ports.values()) == {}
    assert not started.temp_link.exists()
    assert not started.token_file.exists()


def serve(traced, tmp_path, backend="cpu"):
    """Package, start, deploy one replica per unit, wait until each answers: (started, package, replicas)."""
    serving = serving_for(backend)
    resolved = resolve_serving(serving)
    package = ENGINE.package(traced, tmp_path / "model_store")
    started = ENGINE.start(serving, resolved, package, tmp_path / "server")
    try:
        deployment = ENGINE.deploy(started, package, DELAY, resolved.initial_workers, timeout=240)
        replicas = ENGINE.ready(started, deployment, timeout=60)
    except BaseException:
        ENGINE.stop(started)
        raise
    return started, package, deployment, replicas


@pytest.fixture(scope="module")
def served(small_model, tmp_path_factory):
    started, package, deployment, replicas = serve(small_model, tmp_path_factory.mktemp("ray"))
    yield started, package, deployment, replicas
    if head.leftovers(started):  # the last test stops it; this is for when it did not get there
        ENGINE.stop(started)


def test_every_check_the_night_runs_passes_on_ray_serve(served):
    started, package, deployment, replicas = served
    assert deployment.replicas == len(replicas) == resolve_serving(serving_for()).initial_workers
    assert len({replica.pid for replica in replicas}) == len(replicas)
    model = load_config().model
    results = run_checks(started, package, model, ChecksConfig(), DELAY)
    assert [(r.name, r.passed) for r in results if not r.passed] == []
    names = {r.name for r in results}
    assert {"golden pairs", "parity with in-process model", "partial batch", "malformed requests isolated"} <= names
    assert f"texts over max_length {SMALL_LENGTH} truncated" in names


def test_the_inference_endpoint_refuses_a_request_without_the_token(served):
    started, package, _, _ = served
    url = started.endpoints.predictions_url(package.model_name)
    pair = {"seq_0": GOLDEN[0][0], "seq_1": GOLDEN[0][1]}
    assert httpx.post(url, data=pair, timeout=30).status_code == 401
    assert httpx.post(url, data=pair, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    answer = httpx.post(url, data=pair, headers=started.inference_headers(), timeout=30)
    assert answer.status_code == 200 and answer.json()[0] in CLASS_NAMES
    assert stat_mode(started.endpoints.key_file) == stat_mode(started.token_file) == 0o600


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_a_short_load_is_answered_and_serve_accounts_for_it(served):
    started, package, deployment, _ = served
    mark = ENGINE.mark(started, deployment)
    pairs = [(a, b) for a, b, _ in GOLDEN]
    result = loadgen.load(
        started.endpoints.predictions_url(package.model_name),
        started.inference_headers(),
        pairs,
        loadgen.Load(concurrency=8, duration=3.0),
    )
    assert result.errors == 0 and len(result.ok) > 0
    figures = ENGINE.metrics(started, deployment, mark)
    times = figures.times
    assert times is not None and times.request_ms is not None and times.handler_ms is not None
    # Every request the load sent went through the proxy in the window, and was batched: up to batch_size each.
    assert times.request_ms.count >= len(result.ok)
    assert times.batches > 0 and set(times.batch_sizes) <= set(range(1, SMALL_BATCH + 1))
    assert 1.0 <= (times.mean_batch_fill or 0) <= SMALL_BATCH
    assert figures.model_load is not None and figures.model_load.register_to_ready_s
    assert all(worker.worker_load_ms for worker in figures.model_load.workers)


LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def test_ray_listens_on_loopback_only_but_the_replicas_grpc_and_what_is_open_wants_the_token(served):
    """Every listener of the instance is on loopback, except one per replica: Ray Serve 2.60's inter-deployment gRPC
    server, bound to [::]:0 with no setting to change it (ray-project/ray#64544). That one, and the dashboard agent's
    job endpoint (Ray 2.60 has no switch for it), refuse a caller without the token."""
    started, _, _, replicas = served
    ours = {ref.pid for ref in head.marked(started.marker)}
    bound = [
        (c.laddr, c.pid) for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
    ]
    wide = [(address, pid) for address, pid in bound if address.ip not in LOOPBACK]
    assert sorted(pid for _, pid in wide) == sorted(replica.pid for replica in replicas), bound
    for address, _ in wide:
        assert _grpc_refuses_without_a_token(address.port)
    # No listener takes a job without the token. (The agent serves its job endpoint on Ray's fixed port 52365 when
    # that port is free; when another instance -- or one that just stopped -- holds it, the agent serves none.)
    answers = {address.port: _job_submission(address.port) for address, _ in bound}
    assert not [port for port, status in answers.items() if status is not None and status < 400], answers
    assert answers.get(52365, 401) == 401, answers


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


def test_stop_ends_serve_and_ray_and_leaves_nothing(served):
    started, _, _, replicas = served
    assert all(psutil.pid_exists(replica.pid) for replica in replicas)
    outcome = ENGINE.stop(started)
    assert outcome.stopped > len(replicas)
    assert_nothing_left(started)
    assert not any(psutil.pid_exists(replica.pid) for replica in replicas)


OWNER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tasks.common.config import ServingConfig
    from tasks.common.sizing import resolve_serving
    from tasks.engines.ray import head
    serving = ServingConfig(free_ports=True, backend="cpu")
    started = head.start(serving, resolve_serving(serving), Path(sys.argv[1]), batch_size=2)
    head.wait_up(started, 180)
    print("up", flush=True)
    sys.stdin.read()  # until killed
""")


def test_a_crashed_owners_instance_is_found_and_stopped_by_the_next_run(tmp_path):
    """The pipeline process that started Ray dies (kill -9): the next run finds the instance by its record and
    stops it, as it does a crashed night's TorchServe."""
    server_dir = tmp_path / "runs" / "20261205-000000-dead" / "server-ray"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(server_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "up"
    finally:
        owner.kill()
        owner.wait()
    stale = head.find_stale(tmp_path / "runs")
    assert [s.server_dir for s in stale] == [server_dir] and head.leftovers(stale[0])
    lines = head.stop_stale(tmp_path / "runs")
    assert len(lines) == 1 and "left by a crashed run" in lines[0]
    assert_nothing_left(stale[0])


def test_replicas_on_the_neuron_stand_in_hold_distinct_cores_given_by_ray(neuron_host, tmp_path):
    """Two replicas asking neuron_cores: 1 each: Ray gives each its own NeuronCore (NEURON_RT_VISIBLE_CORES), the
    stand-in runtime -- one owner per core -- lets each load there, and the core map and neuron-ls agree."""
    traced = trace(load_config(None, SMALL_SHAPE), "neuron", tmp_path / "model")
    started, package, deployment, replicas = serve(traced, tmp_path, backend="neuron")
    try:
        cores = ENGINE.core_map(started, replicas).cores
        assert sorted(cores) == [0, 1] and sorted(cores.values()) == sorted(r.pid for r in replicas)
        assert {r.unit for r in replicas} == {"NeuronCore 0", "NeuronCore 1"}
        log = [json.loads(line) for line in neuron_host.read_text().splitlines()]
        reserves = {e["pid"]: e["cores"] for e in log if e["event"] == "reserve" and e["pid"] in cores.values()}
        assert sorted(map(tuple, reserves.values())) == [(0,), (1,)]  # the runtime agreed: one owner per core
        assert not [e for e in log if e["pid"] == os.getpid()]  # the test's (the flow's) process never loaded one
        model = load_config().model
        results = run_checks(started, package, model, ChecksConfig(), DELAY)
        assert [(r.name, r.detail) for r in results if not r.passed] == []
    finally:
        ENGINE.stop(started)
    assert_nothing_left(started)
