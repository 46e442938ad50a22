"""A fleet's schedule turned on from another host: `deployments/local.py resume NAME` with PREFECT_API_URL at a real
Prefect server that is not this checkout's `up` on 127.0.0.1.

The server binds to an address of this host that is not loopback when the host has one (a fleet's server is
reached over the network), else to 127.0.0.2: loopback, but not the 127.0.0.1 that `resume` once put in place of
the URL it was given ("no Prefect server answers at http://127.0.0.1:4200/api", and the night was missed). The
test names the address it used. `resume`'s --port points at a port where nothing listens, so a `resume` that
ignored PREFECT_API_URL cannot pass by finding some other server on this host."""

import ipaddress
import os
import socket
import subprocess
import sys

import psutil
import pytest

from tasks.common.config import REPO_ROOT
from tasks.common.polling import Pending, wait_until
from tasks.common.processes import ProcessRef, descendants
from tasks.common.processes import stop as stop_processes
from tests.scripts import deployments_script

pytestmark = pytest.mark.e2e

cli = deployments_script("prefect_cli")
schedules = deployments_script("schedules")
FLEET_DEPLOYMENT = "bert-serving-validation/nightly-inf2-xlarge"


def _address() -> str:
    """An IPv4 address of this host that is not loopback, else 127.0.0.2 (see the module's docstring)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return "127.0.0.2"


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A real Prefect server on `_address()` with prefect.yaml deployed to it and the inf2 schedule paused, as a
    fleet's server is before that family's workers are up; yields its API URL."""
    base = tmp_path_factory.mktemp("remote")
    address = _address()
    port = _free_port(address)
    api = f"http://{address}:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(base / "home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{base / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    with open(base / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(cli.PREFECT), "server", "start", "--host", address, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ref = ProcessRef.of(psutil.Process(server.pid))
    try:

        def up() -> bool | Pending:
            if server.poll() is not None:
                raise AssertionError((base / "server.log").read_text()[-3000:])
            return cli.answers(api) or Pending("not answering yet")

        wait_until(up, 180, f"a Prefect server at {api}")
        deploy_env = cli.prefect_env(base / "deployer", port, api=api)
        cli.create_pools(deploy_env)
        cli.deploy(deploy_env)
        schedules.set_schedules(deploy_env, [FLEET_DEPLOYMENT], False)
        print(f"Prefect server at {api} ({'not loopback' if address != '127.0.0.2' else 'loopback, not 127.0.0.1'})")
        yield api
    finally:
        stop_processes([ref, *descendants([ref])], grace=30)


def _resume(api: str | None, *names: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api is not None:
        env["PREFECT_API_URL"] = api
    nobody = str(_free_port("127.0.0.1"))  # this host's own `up` port: nothing listens there
    return subprocess.run(
        [sys.executable, "deployments/local.py", "resume", "--port", nobody, *names],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _active(api: str, name: str) -> list[bool]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return [schedule.active for schedule in client.read_deployment_by_name(name).schedules]


def test_resume_turns_a_fleet_schedule_on_at_the_server_prefect_api_url_names(remote):
    assert _active(remote, FLEET_DEPLOYMENT) == [False]
    resumed = _resume(remote, "nightly-inf2-xlarge")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"server: {remote}" in resumed.stdout
    assert "schedule active: nightly-inf2-xlarge" in resumed.stdout
    assert _active(remote, FLEET_DEPLOYMENT) == [True]


def test_resume_names_the_server_it_could_not_reach_and_a_deployment_it_does_not_have(remote):
    gone = f"http://127.0.0.1:{_free_port('127.0.0.1')}/api"
    unreachable = _resume(gone, "nightly-inf2-xlarge")
    assert unreachable.returncode == 1
    assert f"no Prefect server answers at {gone}" in unreachable.stderr and "PREFECT_API_URL" in unreachable.stderr
    unknown = _resume(remote, "nightly-tpu")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert f"no deployment bert-serving-validation/nightly-tpu on the Prefect server at {remote}" in unknown.stderr
