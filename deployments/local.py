"""The nightly setup on one host, in one command each way.

    .venv/bin/python deployments/local.py up      # server + work pools + deploy + worker + one run
    .venv/bin/python deployments/local.py up --database postgres --workers 2   # the production shape
    .venv/bin/python deployments/local.py down    # stop exactly what `up` started
    .venv/bin/python deployments/local.py status
    .venv/bin/python deployments/local.py resume [DEPLOYMENT ...]   # turn paused schedules on

`up` starts a Prefect server on 127.0.0.1 (SQLite under .prefect-local/, or with `--database
postgres` a PostgreSQL cluster of its own there, started first: deployments/postgres.py), creates the process
work pools named in prefect.yaml from deployments/process-pool.json, runs `prefect deploy --all`,
pauses the schedules of targets with no worker on this host, creates the alert Automations
(deployments/alerts.py), starts a process worker on the CPU pool and triggers one run with
`prefect deployment run`.
Every process it starts gets its own process group and a pid file under .prefect-local/pids/,
so `down` stops exactly those: first the flow runs in progress (SIGTERM: the flow stops its
TorchServe), then the workers, then the server, then PostgreSQL. The database stays: a later `up`
on the same directory (with the same --database) has the whole history.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from uuid import UUID

import httpx
import psutil
import yaml

from tasks.common.errors import PipelineError
from tasks.common.polling import TimedOut, wait_until
from tasks.common.ports import port_free
from tasks.common.processes import ProcessRef, descendants, tail
from tasks.common.processes import stop as stop_processes

ROOT = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"
POOL_TEMPLATE = ROOT / "deployments" / "process-pool.json"
DEFAULT_DEPLOYMENT = "bert-serving-validation/nightly-cpu-embedded"
DEFAULT_POOL = "bert-validation-cpu"
FLOW_RUN_ID = re.compile(r"UUID:\s*([0-9a-f-]{36})")
DATABASES = ("sqlite", "postgres")


class LocalError(PipelineError):
    """Something `up` or `down` cannot do; the message says why, `fix` what to do."""


def _state_dir(args) -> Path:
    return Path(args.dir or os.environ.get("BERT_LOCAL_DIR") or ROOT / ".prefect-local").resolve()


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def prefect_env(state: Path, port: int) -> dict[str, str]:
    """The environment of every Prefect process here: this server, this state directory, no analytics.
    No database URL: only the server gets one (start_server), so no worker or flow run holds the password."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
    env.update(
        PREFECT_HOME=str(state / "home"),
        PREFECT_API_URL=api_url(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    return env


def _script(name: str) -> ModuleType:
    """deployments/<name>.py as a module, loaded by path (deployments/ is scripts, not a package)."""
    import importlib.util

    path = ROOT / "deployments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bert_validation_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _postgres() -> ModuleType:
    return _script("postgres")


def start_database(state: Path, database: str) -> dict[str, str]:
    """The database the server will use: its URL as the server's environment. PostgreSQL is started here
    (or found running) and recorded like the other processes, so `down` and `status` know it."""
    if database == "sqlite":
        return {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{state / 'prefect.db'}"}
    postgres = _postgres()
    cluster = postgres.Cluster(state)
    try:
        ref, url = postgres.start(cluster)
    except postgres.PostgresError as error:
        raise LocalError(error.message, fix=error.fix) from None
    _record(state, "postgres", ref)
    # str(url) masks the password; it stays in its file and the server's environment.
    print(f"postgres: {url} (data {cluster.data}, password in {cluster.password_file}, log {cluster.log})")
    return postgres.server_env(url)


def stop_database(state: Path) -> list[int]:
    """Stop this state's PostgreSQL, if it has one (pg_ctl stop -m fast); return the pids still alive."""
    postgres = _postgres()
    cluster = postgres.Cluster(state)
    recorded = _recorded(state, "postgres")
    if not cluster.initialized() and recorded is None:
        return []
    try:
        if postgres.stop(cluster):
            print("stopped PostgreSQL")
    except postgres.PostgresError as error:
        print(f"warning: {error}", file=sys.stderr)
    # pg_ctl waited for the postmaster; should it still be there, the escalating stop (SIGTERM is a
    # "smart" shutdown, then SIGKILL) ends it and its backends.
    refs = [recorded, *descendants([recorded])] if recorded is not None and recorded.alive() else []
    return stop_processes(refs, grace=30).survivors if refs else []


# -- pid files: a ProcessRef ("pid create_time boot_time"), so a recycled pid is never taken for ours --


def _pid_file(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def _record(state: Path, name: str, ref: ProcessRef) -> None:
    path = _pid_file(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ref.line() + "\n")


def _recorded(state: Path, name: str) -> ProcessRef | None:
    """The live process a pid file names, or None (and the stale file is removed)."""
    path = _pid_file(state, name)
    try:
        ref = ProcessRef.parse(path.read_text())
    except (OSError, ValueError):
        ref = None
    if ref is not None and ref.alive() is not None:
        return ref
    path.unlink(missing_ok=True)
    return None


def _names(state: Path, prefix: str) -> list[str]:
    folder = state / "pids"
    return sorted(p.stem for p in folder.glob(f"{prefix}*.pid")) if folder.is_dir() else []


def _spawn(state: Path, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _record(state, name, ProcessRef.of(psutil.Process(process.pid)))
    return process


def _prefect(args: list[str], env: dict[str, str], what: str, timeout: float = 300) -> str:
    try:
        done = subprocess.run(
            [str(PREFECT), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise LocalError(
            f"{what}: `prefect {' '.join(args)}` took over {timeout:.0f} s",
            fix="check that the server answers: deployments/local.py status",
        ) from None
    if done.returncode != 0:
        raise LocalError(f"{what} failed: `prefect {' '.join(args)}`\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


# -- up ---------------------------------------------------------------------------------------


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"{api_url(port)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(state: Path, port: int, env: dict[str, str], database: str = "sqlite", timeout: float = 180) -> None:
    marker = state / "database"
    if _recorded(state, "server") is not None:
        running_on = marker.read_text().strip() if marker.exists() else "sqlite"
        if running_on != database:
            raise LocalError(
                f"the server from {state} runs on {running_on}, not {database}",
                fix=f"run `down` first, or pass --database {running_on}",
            )
        if not _healthy(port):
            raise LocalError(
                f"a server from {state} is running but not answering on port {port}",
                fix="run `down` first, or pass the --port it was started with",
            )
        if database == "postgres":
            start_database(state, database)  # finds it running; keeps its pid file current
        print(f"server: already up at {api_url(port)}")
        return
    if not port_free("127.0.0.1", port):
        raise LocalError(f"port {port} on 127.0.0.1 is taken by another program", fix="pass --port N")
    server_env = dict(env, **start_database(state, database))
    marker.write_text(database + "\n")
    process = _spawn(
        state, "server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env
    )
    log = state / "logs" / "server.log"

    def answering() -> bool:
        if process.poll() is not None:
            raise LocalError(
                f"the Prefect server exited (code {process.returncode}) before answering on port "
                f"{port}\n{tail(log, 30) or '(no log)'}",
                fix="read its log above",
            )
        return _healthy(port)

    try:
        wait_until(answering, timeout, f"the Prefect server to answer on port {port}", first=0.5, factor=1.0)
    except TimedOut:
        raise LocalError(
            f"the Prefect server did not come up on port {port} within {timeout:g} s\n{tail(log, 30) or '(no log)'}",
            fix="read its log above; a first start migrates the database and can be slow",
        ) from None
    where = "PostgreSQL" if database == "postgres" else f"SQLite: {state / 'prefect.db'}"
    print(f"server: {api_url(port)} ({where})")


def work_pools() -> list[str]:
    """The work pools prefect.yaml's deployments name, in order."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = [d["work_pool"]["name"] for d in config["deployments"]]
    return list(dict.fromkeys(pools))


def create_pools(env: dict[str, str]) -> None:
    for pool in work_pools():
        _prefect(
            [
                "work-pool",
                "create",
                pool,
                "--type",
                "process",
                "--base-job-template",
                str(POOL_TEMPLATE),
                "--overwrite",
            ],
            env,
            f"creating work pool {pool}",
        )
        print(f"work pool: {pool}")


def deploy(env: dict[str, str]) -> None:
    # Deployed with BERT_VALIDATION_HOME unset: the pull step keeps its placeholder and each
    # worker resolves it to its own checkout (see prefect.yaml).
    deploy_env = {k: v for k, v in env.items() if k != "BERT_VALIDATION_HOME"}
    _prefect(["deploy", "--all"], deploy_env, "prefect deploy --all")
    print("deployed: prefect.yaml (--all)")


def start_workers(state: Path, env: dict[str, str], pool: str, count: int) -> None:
    worker_env = dict(env, BERT_VALIDATION_HOME=str(ROOT))
    for index in range(1, count + 1):
        name = f"worker-{index}"
        if _recorded(state, name) is not None:
            print(f"{name}: already running")
            continue
        # --limit 1: this host runs one validation (one TorchServe) at a time, whatever the deployment.
        _spawn(
            state,
            name,
            [
                str(PREFECT),
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
                "--name",
                f"{socket.gethostname()}-{name}",
                "--limit",
                "1",
            ],
            worker_env,
        )
        print(f"{name}: polling {pool} (log {state / 'logs' / (name + '.log')})")


def deployments_by_pool() -> dict[str, str]:
    """Each deployment of prefect.yaml (flow/deployment) and the work pool it runs on."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {f"{config['name']}/{d['name']}": d["work_pool"]["name"] for d in config["deployments"]}


def set_schedules(env: dict[str, str], names: list[str], active: bool) -> dict[str, UUID]:
    """Turn the schedules of the named deployments on or off; return the ids, by short name, of those
    that have a schedule (an on-demand deployment such as smoke-cpu-embedded has none: it is left out,
    so it never gets a missed-night watch)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ids = {}
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=active)
            if deployment.schedules:
                ids[name.split("/")[-1]] = deployment.id
    return ids


def schedule_targets(env: dict[str, str], pool: str) -> dict[str, UUID]:
    """Only targets with a worker here keep their nightly schedule; the others are paused, so no Late
    runs pile up for a worker that never comes. Returns the ids, by short name, of the deployments
    that now run on a schedule here: each gets a missed-night watch."""
    by_pool = deployments_by_pool()
    here = [name for name, p in by_pool.items() if p == pool]
    absent = [name for name, p in by_pool.items() if p != pool]
    active = set_schedules(env, here, True)
    for name in set_schedules(env, absent, False):
        print(
            f"schedule paused (no worker on this host): {name}; resume: "
            f".venv/bin/python deployments/local.py resume {name}"
        )
    return active


def set_up_alerts(env: dict[str, str], missed: dict[str, UUID]) -> None:
    alerts = _script("alerts")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        names = alerts.set_up(missed)
    if names is None:
        print(f"alerts: off (set {alerts.WEBHOOK_ENV} to a webhook URL: Slack, Teams or any POST endpoint)")
    else:
        print(f"alerts: {len(names)} automations notify through block {alerts.BLOCK_NAME!r}")


def resume(args) -> int:
    env = prefect_env(_state_dir(args), args.port)
    flow = yaml.safe_load((ROOT / "prefect.yaml").read_text())["name"]
    names = [n if "/" in n else f"{flow}/{n}" for n in args.names] or list(deployments_by_pool())
    if not _healthy(args.port):
        raise LocalError(f"no Prefect server answers at {api_url(args.port)}", fix="run `up` first, or pass --port")
    for name in set_schedules(env, names, True):
        print(f"schedule active: {name}")
    return 0


def trigger(env: dict[str, str], deployment: str, params: str | None) -> str:
    command = ["deployment", "run", deployment]
    if params:
        command += ["--params", params]
    out = _prefect(command, env, f"prefect deployment run {deployment}")
    found = FLOW_RUN_ID.search(out)
    if not found:
        raise LocalError(f"no flow run id in the output of `prefect deployment run`:\n{out}")
    return found.group(1)


def up(args) -> int:
    state = _state_dir(args)
    if not PREFECT.is_file():
        raise LocalError(f"{PREFECT} not found", fix="run ./setup.sh first")
    if args.params:
        json.loads(args.params)  # refuse bad JSON before anything starts
    state.mkdir(parents=True, exist_ok=True)
    env = prefect_env(state, args.port)
    start_server(state, args.port, env, args.database)
    create_pools(env)
    deploy(env)
    active = schedule_targets(env, args.pool)
    set_up_alerts(env, active)
    start_workers(state, env, args.pool, args.workers)
    if not args.no_run:
        flow_run = trigger(env, args.deployment, args.params)
        print(f"flow run: {flow_run}")
        print(
            f"  API:  {api_url(args.port)}/flow_runs/{flow_run}  (artifacts: POST "
            f"{api_url(args.port)}/artifacts/filter)"
        )
        print(f"  UI:   http://127.0.0.1:{args.port}/runs/flow-run/{flow_run}")
    print("stop everything: .venv/bin/python deployments/local.py down" + (f" --dir {state}" if args.dir else ""))
    return 0


# -- down -------------------------------------------------------------------------------------


def down(args) -> int:
    state = _state_dir(args)
    left: list[int] = []
    workers = [ref for ref in (_recorded(state, n) for n in _names(state, "worker-")) if ref is not None]
    # Flow runs in progress first: SIGTERM reaches the flow, whose `finally` stops TorchServe and
    # publishes the run's summary while the server is still up to take it.
    below_workers = descendants(workers)
    runs = descendants(workers, recursive=False)
    if runs:
        print(f"stopping {len(runs)} flow run(s) in progress")
        left += stop_processes(runs, grace=120, group=True).survivors
    if workers:
        print(f"stopping {len(workers)} worker(s)")
        left += stop_processes(workers, grace=30, group=True).survivors
    # Anything a run left (it would be a TorchServe of a run killed outright) goes too.
    left += stop_processes(below_workers, grace=30).survivors
    server = _recorded(state, "server")
    if server is not None:
        print("stopping the Prefect server")
        left += stop_processes([server, *descendants([server])], grace=30).survivors
    # Last: the server may write a run's final states until it stops.
    left += stop_database(state)
    for name in _names(state, ""):
        _pid_file(state, name).unlink(missing_ok=True)
    if left:
        print(f"error: still running: {left}", file=sys.stderr)
        return 1
    print("down: no process left")
    return 0


def status(args) -> int:
    state = _state_dir(args)
    names = _names(state, "")
    for name in names:
        process = _recorded(state, name)
        print(f"{name}: {'pid ' + str(process.pid) if process else 'not running'}")
    if (state / "postgres").is_dir():
        postgres = _postgres()
        print(postgres.describe(postgres.Cluster(state)))
    print(f"server API {api_url(args.port)}: {'healthy' if _healthy(args.port) else 'not answering'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deployments/local.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "resume"])
    parser.add_argument("names", nargs="*", help="resume: deployments whose schedules to turn on (default: all)")
    parser.add_argument(
        "--dir", help="state directory: SQLite database, logs, pid files (default: $BERT_LOCAL_DIR or .prefect-local/)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("BERT_LOCAL_PORT", 4200)),
        help="Prefect server port on 127.0.0.1 (default: $BERT_LOCAL_PORT or 4200)",
    )
    parser.add_argument(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="the server's database: SQLite in the state directory, or a PostgreSQL cluster of "
        "its own there, started by `up` and stopped by `down` (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=1, help="process workers on the pool (default: 1)")
    parser.add_argument("--pool", default=DEFAULT_POOL, help="work pool the workers poll (default: %(default)s)")
    parser.add_argument("--deployment", default=DEFAULT_DEPLOYMENT, help="deployment to run (default: %(default)s)")
    parser.add_argument(
        "--params", help='JSON parameters for the run, e.g. \'{"overrides": {"benchmark.duration": 5}}\''
    )
    parser.add_argument("--no-run", action="store_true", help="set up, but trigger no run")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status, "resume": resume}[args.command](args)
    except LocalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
