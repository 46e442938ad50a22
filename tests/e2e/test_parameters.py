"""The Run form's typed settings on a real Prefect server: `prefect deploy` of prefect.yaml's smoke
deployment stores the flow's parameter schema (what the UI draws the Run form from), and the API
refuses a flow run whose settings do not fit -- before any run exists, so no worker ever starts one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.base import PrefectHttpxSyncClient
from prefect.settings import PREFECT_API_URL

from tasks.common.config import REPO_ROOT

pytestmark = pytest.mark.e2e

DEPLOYMENT = "bert-serving-validation/smoke-cpu-embedded"


@pytest.fixture(scope="module")
def api(prefect_server, tmp_path_factory):
    """The smoke deployment, deployed from prefect.yaml the way deployments/local.py does it."""
    url = PREFECT_API_URL.value()
    # Prefect's own client: it retries the 503 the server answers while its SQLite database is locked.
    client = PrefectHttpxSyncClient(base_url=url, timeout=30, raise_on_all_errors=False)
    pool = {"name": "bert-validation-cpu", "type": "process"}
    answer = client.post("/work_pools/", json=pool)
    assert answer.status_code in (201, 409), answer.text  # 409: already there from another test
    env = {key: value for key, value in os.environ.items() if key != "BERT_VALIDATION_HOME"}
    env.update(
        PREFECT_API_URL=url,
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    deployed = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--name", "smoke-cpu-embedded"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    yield client
    client.close()


def _deployment(api) -> dict:
    answer = api.get(f"/deployments/name/{DEPLOYMENT}")
    answer.raise_for_status()
    return answer.json()


def _runs(api, deployment_id: str) -> list[dict]:
    answer = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}})
    answer.raise_for_status()
    return answer.json()


def test_the_run_form_has_typed_settings_with_descriptions(api):
    deployment = _deployment(api)
    assert deployment["enforce_parameter_schema"] is True
    assert deployment["parameters"] == {"settings": {"benchmark": False}}  # no config file: the defaults
    schema = deployment["parameter_openapi_schema"]
    assert schema["properties"]["settings"]["$ref"] == "#/definitions/RunSettings"
    settings = schema["definitions"]["RunSettings"]["properties"]
    batch = settings["batch_size"]
    assert (batch["type"], batch["minimum"], batch["maximum"]) == ("integer", 1, 256)
    assert batch["description"].startswith("requests the server batches into one inference")
    enums = {name: settings[name]["enum"] for name in ("backend", "load", "regression", "benchmark")}
    assert enums == {
        "backend": ["auto", "neuron", "cuda", "cpu", None],
        "load": ["closed", "open", None],
        "regression": ["warn", "fail", None],
        "benchmark": [True, False, None],
    }
    assert all(prop.get("description") for prop in settings.values())


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"batch_size": 0}, "settings.batch_size"),
        ({"batchsize": 4}, "batchsize"),
        ({"backend": "tpu"}, "settings.backend"),
        ({"benchmark": "yes"}, "settings.benchmark"),
    ],
)
def test_a_bad_setting_is_refused_before_any_run_exists(api, settings, field):
    deployment = _deployment(api)
    answer = api.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"settings": settings}},
    )
    assert answer.status_code == 409, answer.text
    assert field in answer.json()["detail"], answer.text
    assert _runs(api, deployment["id"]) == []


def test_a_good_setting_makes_a_run_with_it(api):
    deployment = _deployment(api)
    answer = api.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"settings": {"batch_size": 4, "workers": "auto"}}},
    )
    assert answer.status_code == 201, answer.text
    run = answer.json()
    try:
        # The run's settings replace the deployment's as a whole (Prefect merges parameters one level deep).
        assert run["parameters"] == {"settings": {"batch_size": 4, "workers": "auto"}}
        assert [r["id"] for r in _runs(api, deployment["id"])] == [run["id"]]
    finally:
        api.delete(f"/flow_runs/{run['id']}").raise_for_status()
