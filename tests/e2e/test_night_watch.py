"""A night nobody watches, for real: `deployments/local.py up` (Prefect server on loopback, pools,
deploy, a process worker, the alert Automations through a webhook block pointed at a receiver on
loopback). A run is cancelled mid-benchmark with Prefect's client and must end Cancelled with no
TorchServe left; a failed run, a regression event and a missed night each reach the receiver as a POST
naming the deployment, the run, the stage with its error, and the link."""

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.common.config import REPO_ROOT
from tasks.common.polling import Pending, wait_until
from tasks.serve import server as server_stage
from tests.e2e.conftest import assert_server_gone
from tests.e2e.test_deployment import DEPLOYMENT, TERMINAL, TINY, Api, _free_port, _local, _recorded_processes
from tests.scripts import deployments_script

pytestmark = pytest.mark.e2e

PREFECT = REPO_ROOT / ".venv" / "bin" / "prefect"
TASK_ENDED = re.compile(r"Task run '[^']+' - Finished in state")


class Receiver:
    """A webhook endpoint on loopback that keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 120) -> dict:
        def told() -> dict | Pending:
            found = [message for message in self.received if text in message.get("text", "")]
            return found[0] if found else Pending(f"{len(self.received)} other notifications: {self.received}")

        return wait_until(told, timeout, f"a notification with {text!r}", most=0.5)


@pytest.fixture(scope="module")
def night(small_model, tmp_path_factory):  # small_model: TINY's shape is in the compile cache the worker inherits
    base = tmp_path_factory.mktemp("night")
    state, runs_dir, port = base / "state", base / "runs", _free_port()
    receiver = Receiver()
    os.environ["BERT_VALIDATION_ALERT_WEBHOOK"] = receiver.url  # read by `up`: stored in a block, nowhere else
    env = dict(
        os.environ,
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_HOME=str(state / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    try:
        up = _local("up", state, port, "--no-run")
        assert up.returncode == 0, up.stdout + up.stderr
        yield {
            "api": Api(port),
            "env": env,
            "state": state,
            "runs_dir": runs_dir,
            "port": port,
            "receiver": receiver,
            "up": up.stdout,
        }
    finally:
        os.environ.pop("BERT_VALIDATION_ALERT_WEBHOOK", None)
        leftovers = _recorded_processes(state)
        _local("down", state, port, timeout=300)
        for process in leftovers:
            if process.is_running():
                process.kill()
        receiver.server.shutdown()


def _run(night, overrides: dict) -> str:
    params = json.dumps({"overrides": {**TINY, "runs_dir": str(night["runs_dir"]), **overrides}})
    run = subprocess.run(
        [str(PREFECT), "deployment", "run", DEPLOYMENT, "--params", params],
        cwd=REPO_ROOT,
        env=night["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)


def _final(night, flow_run_id: str, timeout: float = 400) -> dict:
    def ended() -> dict | Pending:
        run = night["api"].get(f"/flow_runs/{flow_run_id}")
        return run if run["state_type"] in TERMINAL else Pending(run["state_type"])

    # Polled every 0.5 s at most: the cancellation test times how long the run took to end.
    return wait_until(ended, timeout, f"flow run {flow_run_id} to end", most=0.5)


def _client(night):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = temporary_settings({PREFECT_API_URL: night["env"]["PREFECT_API_URL"]})
    return settings, get_client


def test_up_pauses_targets_without_a_worker_here_and_says_how_to_resume(night):
    schedules = {
        name: night["api"].get(f"/deployments/name/bert-serving-validation/{name}")["schedules"][0]["active"]
        for name in ("nightly-cpu-embedded", "nightly-inf2-xlarge", "nightly-gpu")
    }
    assert schedules == {"nightly-cpu-embedded": True, "nightly-inf2-xlarge": False, "nightly-gpu": False}
    assert "deployments/local.py resume nightly-gpu" in night["up"]
    resumed = _local("resume", night["state"], night["port"], "nightly-gpu")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert night["api"].get("/deployments/name/bert-serving-validation/nightly-gpu")["schedules"][0]["active"]


def test_the_webhook_url_is_kept_as_a_secret_of_the_block(night):
    blocks = night["api"].post("/block_documents/filter", {})
    (block,) = [b for b in blocks if b["name"] == "bert-validation-alerts"]
    assert night["receiver"].url not in json.dumps(block)  # read back masked


def test_a_run_cancelled_through_the_worker_at_a_random_instant_ends_cancelled_with_no_torchserve_left(night):
    """Cancelled from Prefect (as the UI's Cancel does) just after a task run of its night ends -- the k-th, drawn
    at random, then up to 2 s later: where Prefect sets up the next task, or inside it. A new seed each run,
    printed: INTERRUPT_SEED=<seed> replays it."""
    from prefect.states import Cancelling

    seed = int(os.environ.get("INTERRUPT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    # 7 task runs end before the 600 s benchmark (stop-stale, trace, archive, start, register, wait-ready, check):
    # the 8th would be the benchmark's own end, after the 400 s this test waits.
    after_task, delay = rng.randint(1, 7), rng.uniform(0.0, 2.0)
    print(f"INTERRUPT_SEED={seed}: cancel {delay:.2f} s after task run {after_task} ends")
    worker_log = night["state"] / "logs" / "worker-1.log"
    seen = len(worker_log.read_text(errors="replace")) if worker_log.exists() else 0
    earlier = set(night["runs_dir"].iterdir()) if night["runs_dir"].is_dir() else set()
    flow_run_id = _run(night, {"benchmark.duration": 600})

    def task_ended() -> bool:
        state = night["api"].get(f"/flow_runs/{flow_run_id}")["state_type"]
        assert state not in TERMINAL, f"the run ended ({state}) before it could be cancelled (INTERRUPT_SEED={seed})"
        return len(TASK_ENDED.findall(worker_log.read_text(errors="replace")[seen:])) >= after_task

    wait_until(task_ended, 400, f"task run {after_task} to end", first=0.05, factor=1.0)
    time.sleep(delay)
    settings, get_client = _client(night)
    with settings, get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the test"))
    asked = time.monotonic()
    run = _final(night, flow_run_id, timeout=120)
    took = time.monotonic() - asked
    assert run["state_type"] == "CANCELLED", (run["state"], f"INTERRUPT_SEED={seed}")
    history = [
        s["type"] for s in night["api"].client.get("/flow_run_states/", params={"flow_run_id": flow_run_id}).json()
    ]
    assert "CRASHED" not in history, (history, f"INTERRUPT_SEED={seed}")
    (run_dir,) = [d for d in night["runs_dir"].iterdir() if not d.is_symlink() and d not in earlier]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", f"INTERRUPT_SEED={seed}"
    assert summary["interrupted"]["by"] == "a cancellation in Prefect (SIGTERM from its worker)"
    assert all(s["status"] != "failed" for s in summary["stages"]), summary["stages"]
    server = server_stage.load_record(run_dir / "server")
    if server is not None:
        assert_server_gone(server)
    print(f"cancel through the worker: Cancelled {took:.1f} s after Cancelling was set ({summary['interrupted']})")


def test_a_failed_run_is_told_with_its_deployment_stage_error_and_link(night):
    flow_run_id = _run(night, {"serving.startup_timeout": 0.01})
    run = _final(night, flow_run_id)
    assert run["state_type"] == "FAILED"
    message = night["receiver"].wait_for(run["name"])
    assert message["subject"].startswith("Failed: nightly-cpu-embedded")
    body = message["body"]
    print(f"failure notification:\n{message['text']}")
    assert "deployment: nightly-cpu-embedded" in body and f"run: {run['name']}" in body
    assert re.search(r"stage and error: stage start failed: ServerError: TorchServe did not answer /ping.*\n", body), (
        body
    )
    assert f"/runs/flow-run/{flow_run_id}" in body
    # Stopped at once after start, TorchServe leaves nothing behind (not even a Java its launcher was starting).
    run_dir = next(
        d
        for d in night["runs_dir"].iterdir()
        if not d.is_symlink()
        and (d / "summary.json").is_file()
        and "did not answer /ping" in (d / "summary.json").read_text()
    )
    assert_server_gone(server_stage.load_record(run_dir / "server"))


# A night whose benchmark regressed, in a process of its own as a worker would run it: Prefect's event
# client is a per-process service, so the test process's own (bound to other servers) is kept out of it.
REGRESSED_NIGHT = """
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.measure.results import Regression
from tasks.report.events import emit_regression


@flow(name="regression-event-probe")
def regressed_night():
    emit_regression(Regression(status="regressed", action="warn", tolerance=0.2,
                               message="inferences_per_s 12.0 vs median 21.0 of 3 runs (-43%)"), Path("."))
    print("flow run", flow_run.id)


regressed_night()
"""


def test_a_benchmark_regression_is_told(night):
    done = subprocess.run(
        [sys.executable, "-c", REGRESSED_NIGHT],
        cwd=REPO_ROOT,
        env=night["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = re.search(r"flow run ([0-9a-f-]{36})", done.stdout).group(1)
    message = night["receiver"].wait_for("Regressed")
    assert "stage and error: benchmark: inferences_per_s 12.0 vs median 21.0 of 3 runs" in message["body"]
    assert f"/flow-run/{flow_run_id}" in message["body"]


def test_a_missed_night_is_told(night):
    """The 26 h window, shortened: a deployment with no completed run within it."""
    alerts = deployments_script("alerts")
    settings, _ = _client(night)
    with settings:
        deployment_id = night["api"].get("/deployments/name/bert-serving-validation/nightly-gpu")["id"]
        alerts.set_up({"nightly-gpu": deployment_id}, missed_after=timedelta(seconds=15))
    message = night["receiver"].wait_for("Missed night: nightly-gpu", timeout=120)
    assert "deployment: nightly-gpu" in message["body"] and deployment_id in message["body"]
