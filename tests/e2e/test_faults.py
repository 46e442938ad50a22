"""Fault injection: fail or interrupt the real pipeline at each stage, then prove no TorchServe
process is left, its ports are free, and the run still wrote its summary naming the stage."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flows.validate
from flows.validate import STAGES, validate
from tasks.serve import server as server_stage
from tasks.config import DEFAULT_CONFIG_FILE, REPO_ROOT
from tests.e2e.conftest import assert_server_gone

pytestmark = pytest.mark.e2e

SMALL = {"serving.batch_size": 2, "serving.max_length": 32, "serving.free_ports": True, "serving.initial_workers": 1,
         "benchmark.concurrency": 4, "benchmark.duration": 1, "benchmark.warmup": 0}
SERVER_STAGES = ["start", "register", "check", "benchmark"]


def _planted(stage):
    def fail(*args, **kwargs):
        if stage == "start":
            server_stage.start(*args, **kwargs)  # the server is up, then the stage dies before returning it
        raise RuntimeError(f"planted fault in {stage}")
    return fail


@pytest.mark.parametrize("stage", ["trace", "archive", *SERVER_STAGES])
def test_a_failing_stage_fails_the_run_and_leaves_no_torchserve(stage, prefect_server, tmp_path, monkeypatch):
    monkeypatch.setattr(flows.validate, f"{stage}_task", _planted(stage))
    state = validate(config_file=str(DEFAULT_CONFIG_FILE), overrides={**SMALL, "runs_dir": str(tmp_path)},
                     return_state=True)
    assert state.is_failed()
    run_dir = tmp_path / "latest"
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {s["name"]: s for s in summary["stages"]}
    assert summary["status"] == "failed"
    assert status[stage]["status"] == "failed" and f"planted fault in {stage}" in status[stage]["error"]
    after = STAGES[STAGES.index(stage) + 1 : -1]
    assert all(status[name]["status"] == "skipped" for name in after)
    server = server_stage.load_record(run_dir / "server")
    if stage in SERVER_STAGES:
        assert status["stop"]["status"] == "ok"
        assert_server_gone(server)
    else:
        assert server is None and status["stop"]["status"] == "skipped"


def _wait_for_benchmark(output: Path, process, timeout=300):
    """Until the benchmark's load is running: its progress line ("benchmark   5 s: ...") is in the flow log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the pipeline ended before it could be interrupted"
        if output.is_file() and re.search(r"benchmark +\d+ s:", output.read_text(errors="replace")):
            return
        time.sleep(0.5)
    raise AssertionError("the benchmark never started")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_during_benchmark_stops_torchserve_before_the_run_exits(signum, tmp_path):
    command = [sys.executable, "-m", "flows.validate", "--runs-dir", str(tmp_path), "--free-ports",
               "--batch-size", "2", "--max-length", "32", "--workers", "1", "--concurrency", "4",
               "--duration", "600"]
    output = tmp_path / "flow.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for_benchmark(output, process)
        process.send_signal(signum)
        assert process.wait(timeout=120) != 0
    finally:
        if process.poll() is None:
            process.kill()
        leftover = server_stage.load_record(tmp_path / "latest" / "server")
        if leftover is not None and any(ref.alive() for ref in leftover.processes):
            server_stage.stop(leftover)
            pytest.fail("the interrupted run left TorchServe running")
    summary = json.loads((tmp_path / "latest" / "summary.json").read_text())
    status = {s["name"]: s for s in summary["stages"]}
    assert summary["status"] == "failed"
    assert status["benchmark"]["status"] == "failed"
    assert status["stop"]["status"] == "ok"
    assert_server_gone(server_stage.load_record(tmp_path / "latest" / "server"))
