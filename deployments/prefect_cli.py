"""The `prefect` command line and environment, as `deployments/local.py` drives them: every Prefect process's
environment, the work pools prefect.yaml names, `prefect deploy --all`, `prefect deployment run`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tasks.common.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"
POOL_TEMPLATE = ROOT / "deployments" / "process-pool.json"
FLOW_RUN_ID = re.compile(r"UUID:\s*([0-9a-f-]{36})")


class CliError(PipelineError):
    """A `prefect` command failed or took too long; the message quotes it, `fix` says what to do."""


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def answers(api: str) -> bool:
    """Whether a Prefect server answers at this API URL (http://HOST:PORT/api)."""
    try:
        return httpx.get(f"{api.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def healthy(port: int) -> bool:
    return answers(api_url(port))


def prefect_env(state: Path, port: int, api: str | None = None) -> dict[str, str]:
    """The environment of every Prefect process here: this server (`api`: another one, given by the user's
    PREFECT_API_URL), this state directory, no analytics. No database URL: only the server gets one
    (local.py start_server), so no worker or flow run holds the password."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
    env.update(
        PREFECT_HOME=str(state / "home"),
        PREFECT_API_URL=api or api_url(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    return env


def run(args: list[str], env: dict[str, str], what: str, timeout: float = 300) -> str:
    """`prefect --no-prompt ARGS` in the checkout; its output, or CliError with the end of it."""
    try:
        done = subprocess.run(
            [str(PREFECT), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise CliError(
            f"{what}: `prefect {' '.join(args)}` took over {timeout:.0f} s",
            fix="check that the server answers: deployments/local.py status",
        ) from None
    if done.returncode != 0:
        raise CliError(f"{what} failed: `prefect {' '.join(args)}`\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def work_pools() -> list[str]:
    """The work pools prefect.yaml's deployments name, in order."""
    return list(dict.fromkeys(d["work_pool"]["name"] for d in prefect_yaml()["deployments"]))


def deployments_by_pool() -> dict[str, str]:
    """Each deployment of prefect.yaml (flow/deployment) and the work pool it runs on."""
    config = prefect_yaml()
    return {f"{config['name']}/{d['name']}": d["work_pool"]["name"] for d in config["deployments"]}


def create_pools(env: dict[str, str]) -> None:
    for pool in work_pools():
        template = ["--base-job-template", str(POOL_TEMPLATE)]
        command = ["work-pool", "create", pool, "--type", "process", *template, "--overwrite"]
        run(command, env, f"creating work pool {pool}")
        print(f"work pool: {pool}")


def deploy(env: dict[str, str]) -> None:
    # Deployed with BERT_VALIDATION_HOME unset: the pull step keeps its placeholder and each
    # worker resolves it to its own checkout (see prefect.yaml).
    deploy_env = {k: v for k, v in env.items() if k != "BERT_VALIDATION_HOME"}
    run(["deploy", "--all"], deploy_env, "prefect deploy --all")
    print("deployed: prefect.yaml (--all)")


def trigger(env: dict[str, str], deployment: str, params: str | None) -> str:
    """A run of the deployment now; its flow run id."""
    command = ["deployment", "run", deployment]
    if params:
        command += ["--params", params]
    out = run(command, env, f"prefect deployment run {deployment}")
    found = FLOW_RUN_ID.search(out)
    if not found:
        raise CliError(f"no flow run id in the output of `prefect deployment run`:\n{out}")
    return found.group(1)
