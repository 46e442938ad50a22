"""The UI's Run form, rendered: a real `prefect server start` (the UI on), prefect.yaml's nightly
deployment deployed, its Custom run page opened in headless Chromium. Each setting is a typed
field with its description, and a run submitted without touching the form carries no setting,
so the deployment's config file decides."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tasks.config import REPO_ROOT
from tests.browser import needs_chromium
from tools.screenshots import Browser, find_chromium, wait

pytestmark = [pytest.mark.e2e, needs_chromium]

FIELD = "[...document.querySelectorAll('.schema-form-property')].find(p => p.querySelector(" \
        "'.schema-form-property__label')?.innerText.startsWith({label}))"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.pop("BERT_VALIDATION_HOME", None)
    env.update(PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")), PREFECT_API_URL=f"{url}/api",
               PREFECT_UI_API_URL=f"{url}/api", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    prefect = str(Path(sys.executable).parent / "prefect")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        api = httpx.Client(base_url=f"{url}/api", timeout=30)

        def healthy():
            try:
                return api.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        assert wait(healthy, 240), "prefect server start did not answer in 240 s"
        api.post("/work_pools/", json={"name": "bert-validation-cpu", "type": "process"}).raise_for_status()
        deployed = subprocess.run([prefect, "--no-prompt", "deploy", "--name", "nightly-cpu-embedded"], cwd=REPO_ROOT,
                                  env=env, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        deployment = api.get("/deployments/name/bert-serving-validation/nightly-cpu-embedded").json()
        browser = Browser(find_chromium())
        try:
            yield {"url": url, "api": api, "deployment": deployment, "browser": browser}
        finally:
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _field(browser, label: str, what: str):
    return browser.evaluate(f"(() => {{ const f = {FIELD.format(label=repr(label))}; return f && {what}; }})()")


def test_the_run_form_shows_each_setting_as_a_typed_field(ui, tmp_path):
    browser, deployment = ui["browser"], ui["deployment"]
    assert browser.open(f"{ui['url']}/deployments/deployment/{deployment['id']}/run",
                        "document.body.innerText.includes('Batch Size')", 120), "the Run form did not render"
    browser.save(tmp_path / "run-form.png")  # for a person; kept with the test's tmp_path
    assert _field(browser, "Batch Size", "f.querySelector('input').type") == "number"
    assert "configs/default.yaml: 6" in _field(browser, "Batch Size", "f.innerText")
    assert _field(browser, "Backend", "[...f.querySelectorAll('option')].map(o => o.innerText)")[:4] == \
        ["auto", "neuron", "cuda", "cpu"]
    assert _field(browser, "Load", "[...f.querySelectorAll('option')].map(o => o.innerText)")[:2] == ["closed", "open"]
    assert _field(browser, "Regression", "[...f.querySelectorAll('option')].map(o => o.innerText)")[:2] == \
        ["warn", "fail"]
    # Each field starts empty: the config file decides unless a person sets it.
    assert _field(browser, "Benchmark", "f.querySelector('select').selectedOptions[0].innerText") == "None"
    assert _field(browser, "Duration", "f.querySelector('input').value") == ""

    # Submitted untouched, the run carries no setting: nothing the form showed overrides the config file.
    browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit').click()")
    api = ui["api"]

    def submitted():
        runs = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}).json()
        return [run for run in runs if "settings" in run["parameters"]]

    assert wait(submitted, 60), "no run was created from the form"
    (run,) = submitted()
    assert run["parameters"]["settings"] == {}
    assert run["parameters"]["config_file"] == "configs/default.yaml"
