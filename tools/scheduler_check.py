"""Does a Prefect server on this environment's packages create the runs of a scheduled deployment?

    python -m tools.scheduler_check                     # SQLite, in a temporary PREFECT_HOME
    python -m tools.scheduler_check --database postgres # a temporary PostgreSQL (deployments/postgres.py)

Why it exists: prefect 3.8.8's scheduler failed on SQLAlchemy 2.1 ("Can't evaluate bulk DML statement"), so a
deployment's schedule never created a run and nights were missed without an error anywhere but the server's
log; pyproject.toml bounded SQLAlchemy below 2.1 for it. Run this after changing either package's version
(checked 2026-12-05: prefect 3.8.8 + SQLAlchemy 2.1.9 creates 0 runs on both databases; prefect 3.9.1 + 2.1.9
creates them, so the bound is relaxed). It starts a server with its scheduler looping every 2 s, deploys a
flow scheduled every minute, and passes once the scheduler has created runs; it fails naming the server log's
errors. The server and the database are stopped and removed either way.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy

from tasks.common.polling import TimedOut, wait_until
from tasks.common.processes import end


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scheduled_runs(home: Path, database_env: dict[str, str], timeout: float = 60) -> int:
    """Start a server on `home`, deploy a flow scheduled every minute; the runs its scheduler made in `timeout` s."""
    port = _free_port()
    env = {
        **os.environ,
        **database_env,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = home / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: _healthy(port), 180, "the Prefect server to answer")
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import IntervalSchedule
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # This server's API, not a temporary one of the client's own (prefect is imported already).
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("scheduler-check")
            every_minute = IntervalSchedule(interval=timedelta(minutes=1))
            client.create_deployment(
                flow_id=flow_id,
                name="every-minute",
                entrypoint="scheduler_check.py:flow",
                schedules=[DeploymentScheduleCreate(schedule=every_minute, active=True)],
            )
            try:
                return len(wait_until(client.read_flow_runs, timeout, "the scheduler to create runs", first=1))
            except TimedOut:
                return 0
    finally:
        end(server, grace=10)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.scheduler_check", description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import prefect

    home = Path(tempfile.mkdtemp(prefix="scheduler-check-"))
    home.chmod(0o755)  # PostgreSQL's own user must reach its directory under it
    cluster = None
    database_env: dict[str, str] = {}
    if args.database == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deployments"))
        import postgres

        cluster = postgres.Cluster(home)
        postgres.init(cluster)
        database_env = postgres.server_env(postgres.start(cluster)[1])
    try:
        runs = scheduled_runs(home, database_env)
    finally:
        if cluster is not None:
            postgres.stop(cluster)
    versions = f"prefect {prefect.__version__}, SQLAlchemy {sqlalchemy.__version__}, {args.database}"
    if runs:
        print(f"{versions}: the scheduler created {runs} runs")
        return 0
    errors = [line for line in (home / "server.log").read_text(errors="replace").splitlines() if "Error" in line]
    print(f"{versions}: the scheduler created NO runs in 60 s; the server log's errors:\n" + "\n".join(errors[:10]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
