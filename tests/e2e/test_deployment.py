"""The nightly deployment for real: `deployments/local.py up` starts a Prefect server (SQLite, on
loopback) and two process workers on one pool, deploys prefect.yaml and triggers a run with
`prefect deployment run`; two more runs follow (one good, one that fails at start). Everything
is then read back through the Prefect REST API, and `down` must leave no process behind."""

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import httpx
import psutil
import pytest

from tasks.serve import server as server_stage
from tasks.config import REPO_ROOT
from tests.e2e.conftest import assert_server_gone

pytestmark = pytest.mark.e2e

DEPLOYMENT = "bert-serving-validation/nightly-cpu-embedded"
POOL = "bert-validation-cpu"
TINY = {"serving.free_ports": True, "serving.batch_size": 2, "serving.max_length": 32, "serving.initial_workers": 1,
        "benchmark.duration": 2, "benchmark.concurrency": 4, "benchmark.warmup": 0}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WORKERS = [f"{socket.gethostname()}-worker-{i}" for i in (1, 2)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _local(command: str, state: Path, port: int, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ,
               # Quick turnarounds for a test; the defaults are 10 s polls and a 30 s wait for a slot.
               PREFECT_WORKER_QUERY_SECONDS="2",
               PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2")
    return subprocess.run([sys.executable, "deployments/local.py", command, "--dir", str(state), "--port", str(port),
                           *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _recorded_processes(state: Path) -> list[psutil.Process]:
    """Every process `up` recorded, with all their descendants (flow runs, TorchServe)."""
    found = []
    for pid_file in (state / "pids").glob("*.pid"):
        try:
            process = psutil.Process(int(pid_file.read_text().split()[0]))
            found += [process, *process.children(recursive=True)]
        except (OSError, ValueError, psutil.Error):
            pass
    return found


class Api:
    def __init__(self, port: int):
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=30)

    def get(self, path: str):
        answer = self.client.get(path)
        answer.raise_for_status()
        return answer.json()

    def post(self, path: str, body: dict):
        answer = self.client.post(path, json=body)
        answer.raise_for_status()
        return answer.json()

    def artifacts(self, flow_run_id: str) -> dict:
        found = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in found}


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    base = tmp_path_factory.mktemp("deployment")
    state, runs_dir, port = base / "state", base / "runs", _free_port()
    env = dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_HOME=str(state / "home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    good = json.dumps({"overrides": {**TINY, "runs_dir": str(runs_dir)}})
    failing = json.dumps({"overrides": {**TINY, "runs_dir": str(runs_dir), "serving.startup_timeout": 0.01}})
    started = time.monotonic()
    try:
        up = _local("up", state, port, "--workers", "2", "--params", good)
        assert up.returncode == 0, up.stdout + up.stderr
        first = re.search(r"flow run: ([0-9a-f-]{36})", up.stdout).group(1)
        more = []
        for params in (good, failing):
            run = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "prefect"), "deployment", "run", DEPLOYMENT,
                                  "--params", params], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                 timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
            more.append(re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1))
        api = Api(port)
        ids = {"first": first, "second": more[0], "failing": more[1]}
        deadline = time.monotonic() + 300
        final = {}
        while len(final) < len(ids):
            for name, flow_run_id in ids.items():
                run = api.get(f"/flow_runs/{flow_run_id}")
                if run["state_type"] in TERMINAL:
                    final[name] = run
            if time.monotonic() > deadline:
                logs = "\n".join((state / "logs" / f"worker-{i}.log").read_text()[-3000:] for i in (1, 2))
                raise AssertionError(f"runs not finished in time: { {n: r['state_type'] for n, r in final.items()} }"
                                     f"\n{logs}")
            time.sleep(1)
        yield {"api": api, "runs": final, "state": state, "port": port, "runs_dir": runs_dir,
               "processes": _recorded_processes(state), "started": started}
    finally:
        leftovers = _recorded_processes(state)
        _local("down", state, port, timeout=300)
        for process in leftovers:  # only if `down` failed: what this test started, by pid
            if process.is_running():
                process.kill()


def test_deployment_run_completes_and_its_artifacts_come_back_through_the_api(nightly):
    run = nightly["runs"]["first"]
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["deployment_id"] is not None
    artifacts = nightly["api"].artifacts(run["id"])
    assert {"summary", "predictions", "benchmark", "run-config"} <= set(artifacts)
    assert "**ok**" in artifacts["summary"]["data"]
    predictions = json.loads(artifacts["predictions"]["data"])
    assert predictions and {"seq_0", "seq_1", "expected", "answer"} <= set(predictions[0])
    figures = {row["figure"]: row["value"] for row in json.loads(artifacts["benchmark"]["data"])}
    assert figures["requests_per_s"] > 0 and figures["errors"] == 0


def test_run_config_artifact_holds_parameters_resolved_config_versions_and_host(nightly):
    artifacts = nightly["api"].artifacts(nightly["runs"]["first"]["id"])
    rows = {(r["section"], r["name"]): r["value"] for r in json.loads(artifacts["run-config"]["data"])}
    assert rows[("parameter", "config_file")] == "configs/default.yaml"  # the deployment's own parameter
    assert json.loads(rows[("parameter", "overrides")])["runs_dir"] == str(nightly["runs_dir"])
    assert rows[("config", "serving.batch_size")] == "2" and rows[("config", "model.source")] == "embedded"
    assert rows[("resolved", "initial_workers")] == "1"  # what "auto" or the override became on this host
    assert rows[("version", "prefect")] == "3.8.8" and rows[("version", "torchserve")] == "0.12.0"
    assert rows[("host", "name")] == platform.node() and rows[("host", "cpus")] == str(os.cpu_count())
    # Two nights line up row by row: the same rows in the same order.
    second = nightly["api"].artifacts(nightly["runs"]["second"]["id"])
    assert [(r["section"], r["name"]) for r in json.loads(second["run-config"]["data"])] == \
        [(r["section"], r["name"]) for r in json.loads(artifacts["run-config"]["data"])]


def test_nightly_schedules_and_per_target_parameters_are_on_the_deployments(nightly):
    expected = {"nightly-cpu-embedded": ("configs/default.yaml", POOL),
                "nightly-inf2-xlarge": ("configs/inf2-xlarge.yaml", "bert-validation-inf2"),
                "nightly-gpu": ("configs/gpu.yaml", "bert-validation-gpu")}
    for name, (config_file, pool) in expected.items():
        deployment = nightly["api"].get(f"/deployments/name/bert-serving-validation/{name}")
        (schedule,) = deployment["schedules"]
        # Only the target with a worker on this host runs nightly here; the others wait, paused.
        assert schedule["active"] is (pool == POOL)
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
        assert deployment["parameters"] == {"config_file": config_file}
        assert deployment["work_pool_name"] == pool
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        # Resolved by each worker at run time, not baked in at deploy time.
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BERT_VALIDATION_HOME }}"}}]
    # The scheduler has already planned the next nights.
    deployment_id = nightly["api"].get(f"/deployments/name/{DEPLOYMENT}")["id"]
    scheduled = nightly["api"].post("/flow_runs/filter", {
        "deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}})
    starts = [_time(r["expected_start_time"]).astimezone(timezone.utc) for r in scheduled]
    assert starts and all((t.hour, t.minute, t.second) == (2, 0, 0) for t in starts), starts


def test_two_workers_on_one_pool_and_runs_never_overlap_on_torchserve(nightly):
    api, runs = nightly["api"], nightly["runs"]
    workers = api.post(f"/work_pools/{POOL}/workers/filter", {})
    assert sorted(w["name"] for w in workers) == sorted(WORKERS)
    assert all(w["status"] == "ONLINE" for w in workers)
    assert runs["second"]["state_type"] == "COMPLETED", runs["second"]["state"]
    # Each run was executed by one of the two workers (its output streams into that worker's log).
    logs = {name: (nightly["state"] / "logs" / f"worker-{i}.log").read_text() for i, name in enumerate(WORKERS, 1)}
    for run in runs.values():
        ran_on = [name for name, log in logs.items() if f"Flow run '{run['name']}' - Beginning flow run" in log]
        assert len(ran_on) == 1, (run["name"], ran_on)
    # The deployment's concurrency limit of 1: one run at a time, although two workers were free.
    spans = [(_time(run["start_time"]), _time(run["end_time"])) for run in runs.values()]
    for (start_a, end_a), (start_b, end_b) in combinations(spans, 2):
        assert end_a <= start_b or end_b <= start_a, spans


def test_failed_run_ends_failed_names_the_stage_and_keeps_its_artifacts(nightly):
    run = nightly["runs"]["failing"]
    assert run["state_type"] == "FAILED", run["state"]
    assert "stage start failed" in run["state"]["message"]
    artifacts = nightly["api"].artifacts(run["id"])
    assert {"summary", "run-config"} <= set(artifacts)
    assert "**failed**" in artifacts["summary"]["data"] and "Stage **start**" in artifacts["summary"]["data"]
    rows = {(r["section"], r["name"]): r["value"] for r in json.loads(artifacts["run-config"]["data"])}
    assert rows[("config", "serving.startup_timeout")] == "0.01"


def test_down_stops_the_server_the_workers_and_every_torchserve(nightly):
    processes = nightly["processes"]
    assert len(processes) >= 3  # server (and its children), two workers
    down = _local("down", nightly["state"], nightly["port"], timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    with socket.socket() as probe:
        # Free again: nothing listens (its closed connections may linger in TIME_WAIT, which REUSEADDR allows).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", nightly["port"]))
    servers = [server_stage.load_record(d / "server") for d in nightly["runs_dir"].iterdir() if not d.is_symlink()]
    assert len(servers) == 3 and all(s is not None for s in servers)
    for server in servers:
        assert_server_gone(server)
    print(f"deployment e2e: {time.monotonic() - nightly['started']:.0f} s from `up` to `down`")
