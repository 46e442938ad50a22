"""The nightly setup on one host, in one command each way.

    .venv/bin/python deployments/local.py up      # server + work pools + deploy + worker + one run
    .venv/bin/python deployments/local.py up --database postgres --workers 2   # the production shape
    .venv/bin/python deployments/local.py down    # stop exactly what `up` started
    .venv/bin/python deployments/local.py status
    .venv/bin/python deployments/local.py resume [DEPLOYMENT ...]   # turn paused schedules on
    PREFECT_API_URL=http://prefect.internal:4200/api .venv/bin/python deployments/local.py resume nightly-gpu
                                                     # ... on a fleet's server (another host)

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

This file supervises: what starts, in which order, and what stops, in the reverse order. The pieces it drives are
scripts beside it, loaded by path (deployments/ is scripts, not a package): pids.py (the pid files), prefect_cli.py
(the `prefect` command line and environment), schedules.py (the nightly schedules), alerts.py (the Automations),
postgres.py (the database).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import psutil

from tasks.common.errors import PipelineError
from tasks.common.polling import TimedOut, wait_until
from tasks.common.ports import port_free
from tasks.common.processes import ProcessRef, descendants, tail
from tasks.common.processes import stop as stop_processes

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEPLOYMENT = "bert-serving-validation/nightly-cpu-embedded"
DEFAULT_POOL = "bert-validation-cpu"
DATABASES = ("sqlite", "postgres")


class LocalError(PipelineError):
    """Something `up` or `down` cannot do; the message says why, `fix` what to do."""


def _state_dir(args) -> Path:
    return Path(args.dir or os.environ.get("BERT_LOCAL_DIR") or ROOT / ".prefect-local").resolve()


def _script(name: str) -> ModuleType:
    """deployments/<name>.py as a module, loaded by path (deployments/ is scripts, not a package), once."""
    import importlib.util

    known = f"bert_validation_{name}"
    if known in sys.modules:
        return sys.modules[known]
    path = ROOT / "deployments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(known, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[known] = module
    spec.loader.exec_module(module)
    return module


pids = _script("pids")
cli = _script("prefect_cli")
schedules = _script("schedules")


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
    pids.record(state, "postgres", ref)
    # str(url) masks the password; it stays in its file and the server's environment.
    print(f"postgres: {url} (data {cluster.data}, password in {cluster.password_file}, log {cluster.log})")
    return postgres.server_env(url)


def stop_database(state: Path) -> list[int]:
    """Stop this state's PostgreSQL, if it has one (pg_ctl stop -m fast); return the pids still alive."""
    postgres = _postgres()
    cluster = postgres.Cluster(state)
    recorded = pids.recorded(state, "postgres")
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
    pids.record(state, name, ProcessRef.of(psutil.Process(process.pid)))
    return process


# -- up ---------------------------------------------------------------------------------------


def start_server(state: Path, port: int, env: dict[str, str], database: str = "sqlite", timeout: float = 180) -> None:
    marker = state / "database"
    if pids.recorded(state, "server") is not None:
        running_on = marker.read_text().strip() if marker.exists() else "sqlite"
        if running_on != database:
            raise LocalError(
                f"the server from {state} runs on {running_on}, not {database}",
                fix=f"run `down` first, or pass --database {running_on}",
            )
        if not cli.healthy(port):
            raise LocalError(
                f"a server from {state} is running but not answering on port {port}",
                fix="run `down` first, or pass the --port it was started with",
            )
        if database == "postgres":
            start_database(state, database)  # finds it running; keeps its pid file current
        print(f"server: already up at {cli.api_url(port)}")
        return
    if not port_free("127.0.0.1", port):
        raise LocalError(f"port {port} on 127.0.0.1 is taken by another program", fix="pass --port N")
    server_env = dict(env, **start_database(state, database))
    marker.write_text(database + "\n")
    process = _spawn(
        state, "server", [str(cli.PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env
    )
    log = state / "logs" / "server.log"

    def answering() -> bool:
        if process.poll() is not None:
            raise LocalError(
                f"the Prefect server exited (code {process.returncode}) before answering on port "
                f"{port}\n{tail(log, 30) or '(no log)'}",
                fix="read its log above",
            )
        return cli.healthy(port)

    try:
        wait_until(answering, timeout, f"the Prefect server to answer on port {port}", first=0.5, factor=1.0)
    except TimedOut:
        raise LocalError(
            f"the Prefect server did not come up on port {port} within {timeout:g} s\n{tail(log, 30) or '(no log)'}",
            fix="read its log above; a first start migrates the database and can be slow",
        ) from None
    where = "PostgreSQL" if database == "postgres" else f"SQLite: {state / 'prefect.db'}"
    print(f"server: {cli.api_url(port)} ({where})")


def start_workers(state: Path, env: dict[str, str], pool: str, count: int) -> None:
    worker_env = dict(env, BERT_VALIDATION_HOME=str(ROOT))
    for index in range(1, count + 1):
        name = f"worker-{index}"
        if pids.recorded(state, name) is not None:
            print(f"{name}: already running")
            continue
        # --limit 1: this host runs one validation (one TorchServe) at a time, whatever the deployment.
        _spawn(
            state,
            name,
            [
                str(cli.PREFECT),
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


def resume(args) -> int:
    """Turn schedules on, on the server PREFECT_API_URL names when it is set (a fleet's, on another host), else on
    the one `up` started here (127.0.0.1:--port)."""
    given = os.environ.get("PREFECT_API_URL")
    api = given or cli.api_url(args.port)
    env = cli.prefect_env(_state_dir(args), args.port, api=api)
    flow = cli.prefect_yaml()["name"]
    names = [n if "/" in n else f"{flow}/{n}" for n in args.names] or list(cli.deployments_by_pool())
    if not cli.answers(api):
        fix = (
            "check PREFECT_API_URL: the server's API, e.g. http://prefect.internal:4200/api, reachable from here"
            if given
            else "run `up` first, or pass --port; for a server on another host set PREFECT_API_URL to its API"
        )
        raise LocalError(f"no Prefect server answers at {api}", fix=fix)
    print(f"server: {api}")
    for name in schedules.set_schedules(env, names, True):
        print(f"schedule active: {name}")
    return 0


def up(args) -> int:
    state = _state_dir(args)
    if not cli.PREFECT.is_file():
        raise LocalError(f"{cli.PREFECT} not found", fix="run ./setup.sh first")
    if args.params:
        json.loads(args.params)  # refuse bad JSON before anything starts
    state.mkdir(parents=True, exist_ok=True)
    env = cli.prefect_env(state, args.port)
    start_server(state, args.port, env, args.database)
    cli.create_pools(env)
    cli.deploy(env)
    active = schedules.schedule_targets(env, args.pool, cli.deployments_by_pool())
    _script("alerts").announce(env, active)
    start_workers(state, env, args.pool, args.workers)
    if not args.no_run:
        flow_run = cli.trigger(env, args.deployment, args.params)
        print(f"flow run: {flow_run}")
        print(
            f"  API:  {cli.api_url(args.port)}/flow_runs/{flow_run}  (artifacts: POST "
            f"{cli.api_url(args.port)}/artifacts/filter)"
        )
        print(f"  UI:   http://127.0.0.1:{args.port}/runs/flow-run/{flow_run}")
    print("stop everything: .venv/bin/python deployments/local.py down" + (f" --dir {state}" if args.dir else ""))
    return 0


# -- down -------------------------------------------------------------------------------------


def down(args) -> int:
    state = _state_dir(args)
    left: list[int] = []
    workers = [ref for ref in (pids.recorded(state, n) for n in pids.names(state, "worker-")) if ref is not None]
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
    server = pids.recorded(state, "server")
    if server is not None:
        print("stopping the Prefect server")
        left += stop_processes([server, *descendants([server])], grace=30).survivors
    # Last: the server may write a run's final states until it stops.
    left += stop_database(state)
    pids.forget(state)
    if left:
        print(f"error: still running: {left}", file=sys.stderr)
        return 1
    print("down: no process left")
    return 0


def status(args) -> int:
    state = _state_dir(args)
    names = pids.names(state, "")
    for name in names:
        process = pids.recorded(state, name)
        print(f"{name}: {'pid ' + str(process.pid) if process else 'not running'}")
    if (state / "postgres").is_dir():
        postgres = _postgres()
        print(postgres.describe(postgres.Cluster(state)))
    print(f"server API {cli.api_url(args.port)}: {'healthy' if cli.healthy(args.port) else 'not answering'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployments/local.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "resume"])
    parser.add_argument(
        "names",
        nargs="*",
        help="resume: deployments whose schedules to turn on (default: all), on the server $PREFECT_API_URL names "
        "when set (a fleet's), else on this host's",
    )
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
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return {"up": up, "down": down, "status": status, "resume": resume}[args.command](args)
    except PipelineError as error:  # LocalError, prefect_cli.CliError, postgres.PostgresError
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
