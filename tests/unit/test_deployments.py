"""prefect.yaml, the per-target configs, the work-pool template, and the run-config artifact's rows."""

import json
import os
import platform
import subprocess
import sys

import psutil
import pytest
import yaml

from flows.stages import Stages
from tasks.common.backends import neuron_core_count
from tasks.common.config import REPO_ROOT, RunConfig, load_config
from tasks.common.processes import ProcessRef
from tasks.report.run_summary import host
from tasks.report.summary import run_config_rows
from tests.nights import summary
from tests.scripts import deployments_script

PREFECT_YAML = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in PREFECT_YAML["deployments"]}


NIGHTLY = {"nightly-cpu-embedded", "nightly-inf2-xlarge", "nightly-gpu"}
ENGINES_NIGHT = "nightly-cpu-engines"


def test_one_nightly_deployment_per_target_each_on_its_own_pool_and_a_smoke_check_on_demand():
    assert set(DEPLOYMENTS) == NIGHTLY | {"smoke-cpu-embedded", ENGINES_NIGHT}
    pools = [DEPLOYMENTS[name]["work_pool"]["name"] for name in NIGHTLY]
    assert len(set(pools)) == 3
    assert DEPLOYMENTS["smoke-cpu-embedded"]["work_pool"] == DEPLOYMENTS["nightly-cpu-embedded"]["work_pool"]
    for name, deployment in DEPLOYMENTS.items():
        assert deployment["entrypoint"] == "flows/pipeline.py:validate"
        assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        # The API refuses a run whose parameters do not fit the flow's schema (a typo in the Run form).
        assert deployment["enforce_parameter_schema"] is True
        if name in NIGHTLY:
            (schedule,) = deployment["schedules"]
            assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "UTC"
        elif name == ENGINES_NIGHT:  # an hour later: a host running both never measures the two side by side
            (schedule,) = deployment["schedules"]
            assert schedule["cron"] == "0 3 * * *" and schedule["timezone"] == "UTC"
        else:
            assert not deployment.get("schedules")  # on demand only


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployments_parameters_make_a_valid_run_config(name):
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate as schema_validate

    from flows.pipeline import validate
    from tasks.common.parameters import RunSettings, merged

    parameters = DEPLOYMENTS[name].get("parameters", {})
    # What the API checks when the deployment's run is created ...
    schema_validate(parameters, parameter_schema(validate).model_dump(), raise_on_error=True)
    # ... and what the flow then builds.
    applied, _ = merged(RunSettings.model_validate(parameters.get("settings") or {}), parameters.get("overrides"))
    config = load_config(parameters.get("config_file"), applied)
    assert config.serving.address == "127.0.0.1" and config.serving.token_auth


def test_the_engines_night_serves_torchserve_then_ray_on_a_pool_of_hosts_set_up_with_ray():
    """On the CPU pool a host set up without --ray would fail the night every night; on a pool of its own it is
    off wherever no worker polls it (deployments/local.py up pauses it)."""
    deployment = DEPLOYMENTS[ENGINES_NIGHT]
    config = load_config(None, deployment["parameters"]["overrides"])
    assert config.serving.night_engines() == ["torchserve", "ray"] and config.benchmark.enabled
    assert deployment["work_pool"]["name"] == "bert-validation-cpu-ray"
    assert deployment["work_pool"]["name"] not in {DEPLOYMENTS[name]["work_pool"]["name"] for name in NIGHTLY}


def test_smoke_deployment_skips_the_benchmark_through_its_typed_setting():
    parameters = DEPLOYMENTS["smoke-cpu-embedded"]["parameters"]
    assert parameters == {"settings": {"benchmark": False}}  # no config file: the default night


def test_inf2_xlarge_serves_one_worker_per_neuron_core(monkeypatch, tmp_path):
    serving = load_config(REPO_ROOT / "configs" / "inf2-xlarge.yaml").serving
    assert (serving.backend, serving.instance_type, serving.initial_workers) == ("neuron", "inf2.xlarge", "auto")
    monkeypatch.setenv("PATH", str(tmp_path))  # no neuron-ls: the instance table decides
    assert neuron_core_count(serving.instance_type)[0] == 2


def test_pull_step_moves_the_run_into_the_workers_checkout():
    assert PREFECT_YAML["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BERT_VALIDATION_HOME }}"}}
    ]


def test_pull_step_placeholder_is_resolved_from_the_environment_at_run_time(monkeypatch, tmp_path):
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("BERT_VALIDATION_HOME", str(tmp_path))
    # What prefect's run_step does with a step's inputs on the worker.
    assert apply_values(PREFECT_YAML["pull"][0], os.environ) == {
        "prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}
    }


def test_work_pool_template_is_a_process_template_and_the_helper_creates_every_pool():
    template = json.loads((REPO_ROOT / "deployments" / "process-pool.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    assert template["job_configuration"]["working_dir"] == "{{ working_dir }}"
    assert deployments_script("prefect_cli").work_pools() == list(
        dict.fromkeys(d["work_pool"]["name"] for d in DEPLOYMENTS.values())
    )


def test_local_helper_ignores_a_pid_file_whose_process_is_gone(tmp_path):
    pids = deployments_script("pids")
    (tmp_path / "pids").mkdir()
    (tmp_path / "pids" / "server.pid").write_text("999999999 1.0\n")
    assert pids.recorded(tmp_path, "server") is None
    assert not (tmp_path / "pids" / "server.pid").exists()


def test_local_helper_does_not_take_a_recycled_pid_for_its_own(tmp_path):
    pids = deployments_script("pids")
    (tmp_path / "pids").mkdir()
    me = psutil.Process()
    (tmp_path / "pids" / "worker-1.pid").write_text(f"{me.pid} {me.create_time() - 100.0}\n")
    assert pids.recorded(tmp_path, "worker-1") is None
    assert pids.names(tmp_path, "worker-") == []


def test_local_helper_finds_a_process_it_recorded(tmp_path):
    pids = deployments_script("pids")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids.record(tmp_path, "worker-1", ProcessRef.of(psutil.Process(child.pid)))
        assert pids.recorded(tmp_path, "worker-1").pid == child.pid
    finally:
        child.kill()
        child.wait()
    assert pids.recorded(tmp_path, "worker-1") is None


def _summary():
    stages = Stages(["trace", "stop"])
    for name in ("trace", "stop"):
        with stages.run(name):
            pass
    return summary(stages, config=RunConfig.model_validate({"runs_dir": "/tmp/runs"}))


def test_run_config_rows_hold_parameters_config_resolved_versions_and_host():
    parameters = {
        "config_file": "configs/gpu.yaml",
        "settings": {"batch_size": 4},
        "overrides": {"serving.free_ports": True},
    }
    rows = run_config_rows(parameters, _summary())
    table = {(r["section"], r["name"]): r["value"] for r in rows}
    assert table[("parameter", "config_file")] == "configs/gpu.yaml"
    assert json.loads(table[("parameter", "settings")]) == {"batch_size": 4}
    assert json.loads(table[("parameter", "overrides")]) == {"serving.free_ports": True}
    assert table[("config", "serving.batch_size")] == "6"
    assert table[("config", "serving.initial_workers")] == "auto"
    assert table[("resolved", "initial_workers")] == "2"
    assert table[("version", "prefect")] == "3.9.1"
    assert table[("host", "name")] == platform.node()
    assert table[("host", "cpus")] == str(os.cpu_count())
    assert [r["section"] for r in rows] == sorted(
        [r["section"] for r in rows], key=["parameter", "provenance", "config", "resolved", "version", "host"].index
    )
    assert all(set(r) == {"section", "name", "value"} and isinstance(r["value"], str) for r in rows)


def test_run_config_rows_line_up_between_runs_and_tolerate_no_overrides():
    first = run_config_rows({"config_file": "a.yaml", "overrides": None}, _summary())
    second = run_config_rows({"config_file": "b.yaml"}, _summary())
    assert [(r["section"], r["name"]) for r in first] == [(r["section"], r["name"]) for r in second]
    assert next(r["value"] for r in first if r["name"] == "overrides") == "{}"


def test_host_names_the_machine_os_and_cpus():
    facts = host()
    assert facts.name == platform.node() and facts.cpus == os.cpu_count()
    assert facts.os and (facts.physical_cores or 0) >= 1 and facts.memory_gib > 0
