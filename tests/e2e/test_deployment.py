"""The nightly deployment for real, in its production shape: `deployments/local.py up --database
postgres` starts a PostgreSQL cluster of its own (Debian's, on loopback), a Prefect server on it and
two process workers on one pool, as two hosts would; it deploys prefect.yaml and triggers a nightly
run with `prefect deployment run`. At once an on-demand smoke run follows (each worker takes one run
at a time, so the other worker must take it), then a second nightly run, one that fails at start, which
the deployment's concurrency limit keeps from overlapping the first. Everything is read back through
the Prefect REST API; then `down` and `up` again on the same state: the history and the artifacts come
back unchanged from PostgreSQL. The last `down` must leave no process behind, PostgreSQL included.
(tests/e2e/test_night_watch.py runs `up` on SQLite, so both databases stay covered.)"""

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

import psutil
import pytest
from prefect.client.base import PrefectHttpxSyncClient

from tasks.common.config import REPO_ROOT
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.common.ports import listeners
from tasks.serve import server as server_stage
from tests.browser import needs_chromium
from tests.e2e.conftest import SMALL_SHAPE, assert_server_gone
from tools.screenshots import RUN_DIRECTORY, Browser, find_chromium, wait

pytestmark = pytest.mark.e2e

DEPLOYMENT = "bert-serving-validation/nightly-cpu-embedded"
SMOKE = "bert-serving-validation/smoke-cpu-embedded"
POOL = "bert-validation-cpu"
TINY = {
    "serving.free_ports": True,
    **SMALL_SHAPE,
    "serving.initial_workers": 1,
    "benchmark.duration": 2,
    "benchmark.concurrency": 4,
    "benchmark.warmup": 0,
    "benchmark.capacity.enabled": False,
    # What this file tests is the fleet, not the figures: no in-process ceiling, client check or lone client.
    "benchmark.ceiling_seconds": 0,
    "benchmark.client_check_seconds": 0,
    "benchmark.single_client_seconds": 0,
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
WORKERS = [f"{socket.gethostname()}-worker-{i}" for i in (1, 2)]


def key(kind: str, deployment: str = "nightly-cpu-embedded") -> str:
    """Artifact keys are per deployment: `<kind>-<deployment name>`."""
    return f"{kind}-{deployment}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _local(command: str, state: Path, port: int, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(
        {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},  # `resume` would go to a server it names
        # Quick turnarounds for a test; the defaults are 10 s polls and a 30 s wait for a slot.
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
    )
    return subprocess.run(
        [sys.executable, "deployments/local.py", command, "--dir", str(state), "--port", str(port), *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _live(processes: list[psutil.Process]) -> list[int]:
    def alive(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    return [p.pid for p in processes if alive(p)]


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


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
        # Prefect's own client retries a 503 (the server's answer while its database is busy), as a worker does.
        self.client = PrefectHttpxSyncClient(
            base_url=f"http://127.0.0.1:{port}/api", timeout=30, raise_on_all_errors=False
        )

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

    def why(self, flow_run: dict, lines: int = 60) -> str:
        """A run's state message and its last log lines: what a failed assertion on its state should show."""
        logs = self.post(
            "/logs/filter",
            {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}, "sort": "TIMESTAMP_DESC", "limit": lines},
        )
        return "\n".join(
            [
                f"{flow_run['name']}: {flow_run['state_type']}: {flow_run['state'].get('message')}",
                *(entry["message"] for entry in reversed(logs)),
            ]
        )

    def history(self, flow_run_ids: list[str]) -> dict:
        """What a user reads of these runs: each run's state and times, and its artifacts' contents."""
        kept = ("id", "name", "deployment_id", "state_type", "start_time", "end_time", "parameters")
        return {
            i: (
                {k: self.get(f"/flow_runs/{i}")[k] for k in kept},
                {k: (a["id"], a["type"], a["data"]) for k, a in self.artifacts(i).items()},
            )
            for i in flow_run_ids
        }


@pytest.fixture(scope="module")
def nightly(small_model):
    # small_model: TINY's shape is in the session's compile cache, which the workers' runs inherit
    # (BERT_COMPILE_CACHE): the two runs that start together do not both compile it on a 2-core host.
    # Not under pytest's basetemp: under root, PostgreSQL runs as the `postgres` user, which must be able
    # to reach its data directory, and /tmp/pytest-of-root is closed to others.
    base = Path(tempfile.mkdtemp(prefix="bert-deployment-"))
    base.chmod(0o711)
    state, runs_dir, port = base / "state", base / "runs", _free_port()
    env = dict(
        os.environ,
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_HOME=str(state / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    good = json.dumps({"overrides": {**TINY, "runs_dir": str(runs_dir)}})
    failing = json.dumps({"overrides": {**TINY, "runs_dir": str(runs_dir), "serving.startup_timeout": 0.01}})
    started = time.monotonic()

    def run(deployment: str, params: str) -> str:
        done = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "prefect"), "deployment", "run", deployment, "--params", params],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout).group(1)

    try:
        up = _local("up", state, port, "--database", "postgres", "--workers", "2", "--params", good)
        assert up.returncode == 0, up.stdout + up.stderr
        up_done = time.monotonic()
        ids = {"first": re.search(r"flow run: ([0-9a-f-]{36})", up.stdout).group(1)}
        # Same time as the first night: the smoke check (the smoke deployment turns its benchmark off).
        ids["smoke"] = run(SMOKE, good)
        ids["failing"] = run(DEPLOYMENT, failing)
        api = Api(port)

        def ended() -> dict | Pending:
            runs = {name: api.get(f"/flow_runs/{flow_run_id}") for name, flow_run_id in ids.items()}
            done = all(run["state_type"] in TERMINAL for run in runs.values())
            return runs if done else Pending(str({name: run["state_type"] for name, run in runs.items()}))

        try:
            final = wait_until(ended, 900, "the three runs to end")  # a guard, not a target: CI hosts are slow
        except TimedOut:
            logs = "\n".join((state / "logs" / f"worker-{i}.log").read_text()[-3000:] for i in (1, 2))
            raise AssertionError(f"runs not finished in time\n{logs}") from None
        ran = time.monotonic()
        workers = api.post(f"/work_pools/{POOL}/workers/filter", {})
        # Read before the restart: its `up` deploys again, after which the scheduler re-plans within a minute.
        deployment_id = api.get(f"/deployments/name/{DEPLOYMENT}")["id"]
        scheduled = api.post(
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [deployment_id]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            },
        )
        before = api.history(list(ids.values()))
        # A restart on the same state: everything stops, then the server comes back on the same PostgreSQL.
        first_processes = _recorded_processes(state)
        restart_down = _local("down", state, port, timeout=300)
        left_by_restart = _live(first_processes)
        restart_up = _local("up", state, port, "--database", "postgres", "--no-run", "--workers", "0")
        assert restart_up.returncode == 0, restart_up.stdout + restart_up.stderr
        print(
            f"deployment e2e: up {up_done - started:.0f} s, runs {ran - up_done:.0f} s, "
            f"restart {time.monotonic() - ran:.0f} s"
        )
        yield {
            "api": api,
            "runs": final,
            "workers": workers,
            "scheduled": scheduled,
            "state": state,
            "port": port,
            "runs_dir": runs_dir,
            "up": up,
            "before": before,
            "after": api.history(list(ids.values())),
            "restart": (restart_down, left_by_restart, restart_up),
            "processes": first_processes + _recorded_processes(state),
            "started": started,
        }
    finally:
        leftovers = _recorded_processes(state)
        _local("down", state, port, timeout=300)
        for process in leftovers:  # only if `down` failed: what this test started, by pid
            if process.is_running():
                process.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_deployment_run_completes_and_its_artifacts_come_back_through_the_api(nightly):
    run = nightly["runs"]["first"]
    assert run["state_type"] == "COMPLETED", nightly["api"].why(run)
    assert run["deployment_id"] is not None
    artifacts = nightly["api"].artifacts(run["id"])
    assert {key("summary"), key("predictions"), key("benchmark"), key("run-config"), key("trend")} <= set(artifacts)
    assert "**ok**" in artifacts[key("summary")]["data"]
    predictions = json.loads(artifacts[key("predictions")]["data"])
    assert predictions and {"seq_0", "seq_1", "expected", "answer"} <= set(predictions[0])
    figures = {row["figure"]: row["value"] for row in json.loads(artifacts[key("benchmark")]["data"])}
    assert figures["requests_per_s"] > 0 and figures["errors"] == 0


def test_run_config_artifact_holds_parameters_resolved_config_versions_and_host(nightly):
    artifacts = nightly["api"].artifacts(nightly["runs"]["first"]["id"])
    rows = {(r["section"], r["name"]): r["value"] for r in json.loads(artifacts[key("run-config")]["data"])}
    assert rows[("parameter", "config_file")] == "none: the defaults"  # the deployment's own parameter
    assert json.loads(rows[("parameter", "overrides")])["runs_dir"] == str(nightly["runs_dir"])
    assert rows[("config", "serving.batch_size")] == "2" and rows[("config", "model.source")] == "embedded"
    assert rows[("resolved", "initial_workers")] == "1"  # what "auto" or the override became on this host
    assert rows[("version", "prefect")] == "3.9.1" and rows[("version", "torchserve")] == "0.12.0"
    assert rows[("host", "name")] == platform.node() and rows[("host", "cpus")] == str(os.cpu_count())
    # Two nights line up row by row: the same rows in the same order, even when the second failed at start.
    second = nightly["api"].artifacts(nightly["runs"]["failing"]["id"])
    assert [(r["section"], r["name"]) for r in json.loads(second[key("run-config")]["data"])] == [
        (r["section"], r["name"]) for r in json.loads(artifacts[key("run-config")]["data"])
    ]


def test_nightly_schedules_and_per_target_parameters_are_on_the_deployments(nightly):
    expected = {
        "nightly-cpu-embedded": (None, POOL),
        "nightly-inf2-xlarge": ("configs/inf2-xlarge.yaml", "bert-validation-inf2"),
        "nightly-gpu": ("configs/gpu.yaml", "bert-validation-gpu"),
    }
    for name, (config_file, pool) in expected.items():
        deployment = nightly["api"].get(f"/deployments/name/bert-serving-validation/{name}")
        (schedule,) = deployment["schedules"]
        # Only the target with a worker on this host runs nightly here; the others wait, paused.
        assert schedule["active"] is (pool == POOL)
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
        assert deployment["parameters"] == ({"config_file": config_file} if config_file else {})
        assert deployment["work_pool_name"] == pool
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        # Resolved by each worker at run time, not baked in at deploy time.
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BERT_VALIDATION_HOME }}"}}
        ]
    # The engines night: on the pool of hosts set up with Ray, which no worker polls here -- paused, an hour later.
    engines = nightly["api"].get("/deployments/name/bert-serving-validation/nightly-cpu-engines")
    assert engines["work_pool_name"] == "bert-validation-cpu-ray" and not engines["schedules"][0]["active"]
    assert engines["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    assert engines["parameters"] == {"overrides": {"serving.engines": ["torchserve", "ray"]}}
    # The scheduler had planned the next nights (read before the restart).
    starts = [_time(r["expected_start_time"]).astimezone(UTC) for r in nightly["scheduled"]]
    assert starts and all((t.hour, t.minute, t.second) == (2, 0, 0) for t in starts), starts


def test_both_workers_take_runs_and_nightly_runs_never_overlap_on_torchserve(nightly):
    runs, workers = nightly["runs"], nightly["workers"]
    assert sorted(w["name"] for w in workers) == sorted(WORKERS)
    assert all(w["status"] == "ONLINE" for w in workers)
    # Each run was executed by one of the two workers (its output streams into that worker's log).
    logs = {name: (nightly["state"] / "logs" / f"worker-{i}.log").read_text() for i, name in enumerate(WORKERS, 1)}
    ran_on = {}
    for which, run in runs.items():
        found = [name for name, log in logs.items() if f"Flow run '{run['name']}' - Beginning flow run" in log]
        assert len(found) == 1, (run["name"], found)
        ran_on[which] = found[0]
    # The first night and the smoke check were triggered together; a worker runs one at a time
    # (--limit 1), so the other worker took the second: both hosts of the pool work.
    assert ran_on["first"] != ran_on["smoke"], ran_on
    assert set(ran_on.values()) == set(WORKERS)
    # The deployment's concurrency limit of 1: one nightly run at a time, although two workers were free.
    spans = [(_time(run["start_time"]), _time(run["end_time"])) for which, run in runs.items() if which != "smoke"]
    for (start_a, end_a), (start_b, end_b) in combinations(spans, 2):
        assert end_a <= start_b or end_b <= start_a, spans


def test_smoke_run_checks_without_benchmark_and_reports_under_its_own_keys(nightly):
    run = nightly["runs"]["smoke"]
    assert run["state_type"] == "COMPLETED", nightly["api"].why(run)
    artifacts = nightly["api"].artifacts(run["id"])
    assert key("summary", "smoke-cpu-embedded") in artifacts
    assert "**ok**" in artifacts[key("summary", "smoke-cpu-embedded")]["data"]
    assert key("benchmark", "smoke-cpu-embedded") not in artifacts  # its benchmark is off
    assert not any(k.endswith("nightly-cpu-embedded") for k in artifacts), sorted(artifacts)


def _trend_runs(markdown: str) -> list[str]:
    """The first column of the trend's table: one flow run name per row, newest first."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")][2:]  # past header and |---|
    return [row.split("|")[1].strip() for row in rows]


def test_trend_of_the_nightly_deployment_lists_its_runs_and_not_the_smoke_run(nightly):
    runs = nightly["runs"]
    nightly_runs = [r for which, r in runs.items() if which != "smoke"]
    last = max(nightly_runs, key=lambda r: _time(r["end_time"]))
    trend = nightly["api"].artifacts(last["id"])[key("trend")]
    assert trend["type"] == "markdown"
    title = trend["data"].splitlines()[0]
    assert title.startswith("# Trend: ") and "nightly-cpu-embedded" in title, title
    names = _trend_runs(trend["data"])
    # The last night's trend: itself on top, then the night before it; never the smoke check.
    assert names[0] == last["name"] and sorted(names) == sorted(r["name"] for r in nightly_runs), names
    assert runs["smoke"]["name"] not in names


def test_failed_run_ends_failed_names_the_stage_and_keeps_its_artifacts(nightly):
    run = nightly["runs"]["failing"]
    assert run["state_type"] == "FAILED", run["state"]
    assert "stage start failed" in run["state"]["message"]
    # What a user reads in the run's log in the UI: the stage's own error.
    assert "TorchServe did not answer /ping Healthy within 0.01 s" in nightly["api"].why(run)
    artifacts = nightly["api"].artifacts(run["id"])
    assert {key("summary"), key("run-config")} <= set(artifacts)
    summary = artifacts[key("summary")]["data"]
    assert "**failed**" in summary and "Stage **start**" in summary
    rows = {(r["section"], r["name"]): r["value"] for r in json.loads(artifacts[key("run-config")]["data"])}
    assert rows[("config", "serving.startup_timeout")] == "0.01"


def test_history_and_artifacts_survive_a_server_restart_on_postgres(nightly):
    restart_down, left, restart_up = nightly["restart"]
    assert restart_down.returncode == 0, restart_down.stdout + restart_down.stderr
    assert "stopped PostgreSQL" in restart_down.stdout and left == []
    assert "postgres: postgresql+asyncpg://prefect:***@127.0.0.1:" in restart_up.stdout
    before, after = nightly["before"], nightly["after"]
    assert all(artifacts for _, artifacts in before.values())
    assert after == before  # every run, its state and times, and each artifact's id and content


def test_the_database_password_never_reaches_output_logs_or_artifacts(nightly):
    secret = (nightly["state"] / "postgres-password").read_text().strip()
    assert len(secret) >= 32 and oct((nightly["state"] / "postgres-password").stat().st_mode)[-3:] == "600"
    printed = [nightly["up"].stdout, nightly["up"].stderr, *(p.stdout for p in nightly["restart"][::2])]
    logs = [f.read_text(errors="replace") for f in (nightly["state"] / "logs").glob("*.log")]
    artifacts = [json.dumps(a) for _, a in nightly["after"].values()]
    assert logs and not any(secret in text for text in printed + logs + artifacts)


@needs_chromium
def test_a_person_sees_the_summary_charts_and_the_trend_in_the_prefect_ui(nightly):
    """Headless Chromium opens the first run's Artifacts tab, its deployment page and its summary and trend
    pages (tools/screenshots.py), on the restarted server: the rendered pages hold the summary's chart image
    and the trend table with this run in it; the screenshots land in the run directory."""
    run = nightly["runs"]["first"]
    looked = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.screenshots",
            "--ui",
            f"http://127.0.0.1:{nightly['port']}",
            "--flow-run",
            run["id"],
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert looked.returncode == 0, looked.stdout + looked.stderr
    summary = nightly["api"].artifacts(run["id"])[key("summary")]["data"]
    run_dir = Path(RUN_DIRECTORY.search(summary).group(1))
    assert run_dir.parent == nightly["runs_dir"]
    shots = sorted((run_dir / "screenshots").glob("*.png"))
    assert [p.name for p in shots] == ["deployment.png", "run-artifacts.png", "summary.png", "trend.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and p.stat().st_size > 10_000 for p in shots)


FIELD = (
    "[...document.querySelectorAll('.schema-form-property')].find(p => p.querySelector("
    "'.schema-form-property__label')?.innerText.startsWith({label}))"
)


@needs_chromium
def test_the_run_form_shows_each_setting_as_a_typed_field(nightly, tmp_path):
    """The nightly deployment's Custom run page, rendered: each setting is a typed field with its description,
    and a run submitted without touching the form carries no setting, so the config file decides. (The
    restarted server has no worker, so the submitted run only waits.)"""
    api = nightly["api"]
    deployment = api.get(f"/deployments/name/{DEPLOYMENT}")
    earlier = {run["id"] for run in nightly["runs"].values()}
    browser = Browser(find_chromium())

    def field(label: str, what: str):
        return browser.evaluate(f"(() => {{ const f = {FIELD.format(label=repr(label))}; return f && {what}; }})()")

    def from_the_form() -> list[dict]:  # the scheduler's planned nights carry the deployment's parameters only
        found = api.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        return [r for r in found if "settings" in r["parameters"] and r["id"] not in earlier]

    try:
        assert browser.open(
            f"http://127.0.0.1:{nightly['port']}/deployments/deployment/{deployment['id']}/run",
            "document.body.innerText.includes('Batch Size')",
            120,
        ), "the Run form did not render"
        browser.save(tmp_path / "run-form.png")  # for a person; kept with the test's tmp_path
        assert field("Batch Size", "f.querySelector('input').type") == "number"
        assert "else the default (6)" in field("Batch Size", "f.innerText")
        options = "[...f.querySelectorAll('option')].map(o => o.innerText)"
        assert field("Backend", options)[:4] == ["auto", "neuron", "cuda", "cpu"]
        assert field("Load", options)[:2] == ["closed", "open"]
        assert field("Regression", options)[:2] == ["warn", "fail"]
        # Each field starts empty: the config file decides unless a person sets it.
        assert field("Benchmark", "f.querySelector('select').selectedOptions[0].innerText") == "None"
        assert field("Duration", "f.querySelector('input').value") == ""
        browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit').click()")
        assert wait(from_the_form, 60), "no run was created from the form"
    finally:
        browser.close()
    (submitted,) = from_the_form()
    assert submitted["parameters"]["settings"] == {}
    assert submitted["parameters"].get("config_file") is None  # the deployment's: no file, the defaults


def test_down_stops_postgres_the_server_the_workers_and_every_torchserve(nightly):
    processes = nightly["processes"]
    # server (and its children), two workers, PostgreSQL with its backends (the restart's still running)
    assert len(processes) >= 3 and any(_name(p) == "postgres" for p in processes)
    down = _local("down", nightly["state"], nightly["port"], timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert _live(processes) == []
    assert listeners([nightly["port"]]) == {}  # nothing listens on the server's port
    servers = [server_stage.load_record(d / "server") for d in nightly["runs_dir"].iterdir() if not d.is_symlink()]
    assert len(servers) == 3 and all(s is not None for s in servers)  # first, smoke, failing
    for server in servers:
        assert_server_gone(server)
    print(f"deployment e2e: {time.monotonic() - nightly['started']:.0f} s from `up` to `down`")
