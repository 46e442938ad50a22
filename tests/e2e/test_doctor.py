"""python -m flows.doctor on this host's CPU and on the Neuron stand-in: every step that applies passes with a
real TorchServe, and a host that is not ready fails at the step that says why, with its fix.

On the stand-in the doctor runs in this process (tasks.doctor.doctor): the fallback directory of Neuron's
tools is the stand-ins' only in-process (tests/stand_ins/host.py).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tasks.common import tools
from tasks.common.compiler import BF16_PARITY_TOLERANCE
from tasks.common.config import REPO_ROOT, load_config
from tasks.doctor import doctor
from tasks.doctor.report import artifact_key

pytestmark = pytest.mark.e2e

NEURON_ONLY = ("neuron-ls", "core-released", "second-loader-refused")


def run_command(out, *args, env=None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.doctor", "--out", str(out), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - started


def statuses(report) -> dict[str, str]:
    steps = report["steps"] if isinstance(report, dict) else [s.model_dump() for s in report.steps]
    return {s["name"]: s["status"] for s in steps}


def events(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_doctor_passes_on_this_hosts_cpu_and_writes_its_report(tmp_path):
    done, took = run_command(tmp_path / "doctor", "--backend", "cpu")
    print(f"doctor on cpu: {took:.1f} s (the command); report: {tmp_path / 'doctor'}\n{done.stdout}")

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "doctor" / "doctor.json").read_text())
    assert report["ok"] and report["backend"] == "cpu"
    assert statuses(report) == {
        "host": "pass",
        "install": "pass",
        "java": "pass",
        "backend": "pass",
        **dict.fromkeys(NEURON_ONLY, "skipped"),
        "compile": "pass",
        "serve": "pass",
        "worker-replaced": "pass",
        "telemetry": "skipped",
        "stop": "pass",
    }
    step = {s["name"]: s for s in report["steps"]}
    assert "GLIBC" in step["host"]["detail"] and "Python 3.1" in step["host"]["detail"]
    assert step["neuron-ls"]["detail"] == "Neuron only (backend cpu)"
    assert step["telemetry"]["detail"] == "no accelerator tool on cpu"
    assert "-> paraphrase" in step["serve"]["detail"] and "killed worker pid" in step["worker-replaced"]["detail"]
    assert "none left" in step["stop"]["detail"]
    # On the terminal, a line per step as it finished, in order; the same rows in doctor.md.
    printed = [line.split()[1] for line in done.stdout.splitlines() if line.split()[:1] in (["pass"], ["skipped"])]
    assert printed == list(statuses(report))
    assert (tmp_path / "doctor" / "doctor.md").read_text().count("| ✓ pass |") == 8
    assert "Traceback" not in done.stderr


def test_the_doctor_passes_on_the_neuron_stand_in_and_never_touches_a_core_itself(
    prefect_server, neuron_host, tmp_path, monkeypatch
):
    # A refused core ends the loader's process (c10::Error, SIGABRT), as on Inf2 in huggingface/optimum-neuron#377:
    # the second loader's step must still see a refusal, and say so; the replaced worker must still come back.
    monkeypatch.setenv("STAND_IN_NEURON_REFUSAL", "abort")
    said, started = [], time.monotonic()
    report = doctor(load_config(), backend="neuron", out_dir=tmp_path / "doctor", say=said.append)
    took = time.monotonic() - started
    print(f"doctor on the Neuron stand-in: {took:.1f} s (in-process)", *said, sep="\n")

    assert report.ok, [s for s in report.steps if s.status != "pass"]
    assert set(statuses(report).values()) == {"pass"}
    step = {s.name: s for s in report.steps}
    assert "2 NeuronCores (from neuron-ls --json-output); 2 workers" in step["backend"].detail
    assert "--auto-cast matmult --auto-cast-type bf16" in step["compile"].detail
    # The BF16 tolerance, and beside it what it was derived from.
    assert f"(tolerance {BF16_PARITY_TOLERANCE:g}; a CPU emulation of this casting drifts" in step["compile"].detail
    assert "was refused to a second loader: the Neuron runtime refused" in step["second-loader-refused"].detail
    assert "died of it (killed by SIGABRT)" in step["second-loader-refused"].detail
    assert "cores 0: pid" in step["serve"].detail and "1: pid" in step["serve"].detail
    log = events(neuron_host)
    assert [e for e in log if e["pid"] == os.getpid()] == []  # the doctor's process never loaded a graph
    refused = [e for e in log if e["event"] == "reserve-failed" and e["requested"] == [0]]
    assert refused, "no second loader was refused core 0: the step proved nothing"
    assert [e["path"] for e in log if e["event"] == "neuronx-cc"] == [str(tools.environment_bin() / "neuronx-cc")]
    # A host with a Prefect API (here the test's) gets the report as an artifact.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(report.host)]))
        )
    assert found and "ready for tonight's run" in found[0].data
    assert said[-2].startswith(f"published the Prefect artifact {artifact_key(report.host)}")


def test_without_the_compiler_in_the_environment_the_compile_step_fails_with_its_fix(
    neuron_host, tmp_path, monkeypatch
):
    # The environment's bin as it is without neuronx-cc, seen by this process only: renaming the file there
    # took the compiler from another test session running beside this one.
    found = tools.environment_tool
    monkeypatch.setattr(tools, "environment_tool", lambda name: None if name == "neuronx-cc" else found(name))
    report = doctor(load_config(), backend="neuron", out_dir=tmp_path / "doctor")

    step = {s.name: s for s in report.steps}
    assert not report.ok and step["compile"].status == "fail"
    assert "neuronx-cc is not in this environment's bin" in step["compile"].detail
    assert "./setup.sh --neuron" in step["compile"].fix
    assert step["serve"].detail == "needs compile, which failed"
    assert step["worker-replaced"].detail == "needs serve, which was skipped: compile failed"
    assert statuses(report)["neuron-ls"] == "pass" and statuses(report)["stop"] == "pass"


def test_a_core_held_by_another_process_fails_the_neuron_ls_step_naming_it(neuron_host, tmp_path):
    code = "import torch_neuronx, sys; torch_neuronx.reserve(); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        env=tools.with_environment_bin({**os.environ, "NEURON_RT_VISIBLE_CORES": "0"}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        report = doctor(load_config(), backend="neuron", out_dir=tmp_path / "doctor")
        assert holder.poll() is None  # named, never stopped: it is not the doctor's
    finally:
        holder.stdin.close()
        holder.wait()

    step = {s.name: s for s in report.steps}
    assert not report.ok and step["neuron-ls"].status == "fail"
    assert f"pid {holder.pid} (" in step["neuron-ls"].detail and "stop that process" in step["neuron-ls"].fix
    assert step["serve"].detail == "needs core-released, which was skipped: neuron-ls failed"
    assert step["stop"].status == "pass" and "not free before the doctor began" in step["stop"].detail


def test_without_java_the_java_step_fails_with_its_fix_and_serving_is_skipped(tmp_path):
    empty = tmp_path / "no-java"
    empty.mkdir()
    env = {**os.environ, "JAVA_HOME": str(empty), "PATH": str(tools.environment_bin())}
    done, _ = run_command(tmp_path / "doctor", "--backend", "cpu", env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "doctor" / "doctor.json").read_text())
    step = {s["name"]: s for s in report["steps"]}
    assert step["java"]["status"] == "fail" and "Java is not installed" in step["java"]["detail"]
    assert "openjdk-17-jre-headless" in step["java"]["fix"]
    assert step["serve"]["detail"] == "needs java, which failed"
    assert statuses(report)["compile"] == "pass"  # what does not need Java still ran
    lines = done.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("fail") and " java " in line)
    assert lines[failed + 1].strip().startswith("fix: install Java 11")
    assert "Traceback" not in done.stdout + done.stderr
