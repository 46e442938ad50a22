"""The doctor's runner and report (tasks/doctor), with tiny fake checks: order, skipping what needs a failed
step, the exit code, and what doctor.md / doctor.json hold."""

import json
import os
import re
import threading

import pytest

import tasks.doctor
from flows import doctor as command
from tasks.common import polling, tools
from tasks.common.config import REPO_ROOT, load_config
from tasks.common.errors import PipelineError
from tasks.common.sizing import ResolvedServing
from tasks.doctor.report import Report, artifact_key, markdown, publish, write
from tasks.doctor.runner import BUG_FIX, Check, NotApplicable, Step, line, run_checks
from tasks.doctor.steps import DoctorError
from tests.unit.fake_time import TimeOn


def passes(detail="fine"):
    return lambda: detail


def fails(message="broken", fix="mend it"):
    def run():
        raise PipelineError(message, fix=fix)

    return run


def not_here(why="Neuron only (backend cpu)"):
    def run():
        raise NotApplicable(why)

    return run


def test_checks_run_in_order_and_what_needs_a_failed_step_is_skipped_naming_it():
    ran, told = [], []

    def track(name, run):
        def wrapped():
            ran.append(name)
            return run()

        return Check(name, wrapped)

    checks = [
        track("install", passes()),
        track("java", fails("no Java", "install Java 17")),
        track("compile", passes()),
        Check("serve", passes(), needs=("java", "compile")),
        Check("worker-replaced", passes(), needs=("serve",)),
        track("telemetry", passes()),
        Check("stop", passes("nothing to stop"), always=True),
    ]
    outcome = run_checks(checks, on_step=told.append)

    assert ran == ["install", "java", "compile", "telemetry"]
    assert [s.name for s in told] == [c.name for c in checks]  # each told as it finished, in order
    by_name = {s.name: s for s in outcome.steps}
    assert [s.status for s in outcome.steps] == ["pass", "fail", "pass", "skipped", "skipped", "pass", "pass"]
    assert (by_name["java"].detail, by_name["java"].fix) == ("no Java", "install Java 17")
    assert by_name["serve"].detail == "needs java, which failed"
    assert by_name["worker-replaced"].detail == "needs serve, which was skipped: java failed"
    assert by_name["stop"].detail == "nothing to stop"
    assert not outcome.ok and not outcome.interrupted


def test_a_step_that_does_not_apply_is_skipped_saying_why_and_blocks_nothing():
    outcome = run_checks([Check("neuron-ls", not_here()), Check("core-released", passes(), needs=("neuron-ls",))])
    assert [(s.status, s.detail) for s in outcome.steps] == [("skipped", "Neuron only (backend cpu)"), ("pass", "fine")]
    assert outcome.ok


def test_a_failure_without_a_fix_gets_the_checks_own_and_a_bug_gets_its_traceback(capsys):
    def bug():
        raise KeyError("model_files")

    outcome = run_checks(
        [
            Check("compile", fails("child crashed", fix=None), fix="read the child's lines"),
            Check("serve", bug),
            Check("telemetry", passes()),
        ]
    )
    compile_, serve, telemetry = outcome.steps
    assert compile_.fix == "read the child's lines"
    assert (serve.status, serve.detail, serve.fix) == ("fail", "KeyError: 'model_files'", BUG_FIX)
    assert "Traceback" in capsys.readouterr().err  # a bug's traceback; an expected failure has none
    assert telemetry.status == "pass"  # a bug is a failed step, not the end of the doctor


def test_ctrl_c_fails_the_step_it_interrupts_skips_the_rest_and_still_stops():
    def interrupted():
        raise KeyboardInterrupt

    stopped = []
    outcome = run_checks(
        [
            Check("serve", interrupted),
            Check("telemetry", passes()),
            Check("stop", lambda: stopped.append(1) or "stopped", always=True),
        ]
    )
    assert [s.status for s in outcome.steps] == ["fail", "skipped", "pass"]
    assert "interrupted" in outcome.steps[0].detail
    assert outcome.steps[1].detail == "not run: the doctor was interrupted"
    assert stopped == [1] and outcome.interrupted and not outcome.ok


def test_the_terminal_line_has_status_name_seconds_detail_and_a_fix_under_a_failure():
    assert (
        line(Step(name="java", status="pass", seconds=0.08, detail="Java 11+ at /usr/bin/java"))
        == "pass    java                      0.1 s  Java 11+ at /usr/bin/java"
    )
    failed = line(
        Step(
            name="install",
            status="fail",
            seconds=4.0,
            detail="python -m pip check found broken requirements:\nfoo 1.0 requires bar",
            fix="./setup.sh",
        )
    )
    assert failed.splitlines() == [
        "fail    install                   4.0 s  python -m pip check found broken requirements:",
        "        foo 1.0 requires bar",
        "        fix: ./setup.sh",
    ]


def report(ok=False, interrupted=False) -> Report:
    steps = [
        Step(name="install", status="pass", seconds=3.2, detail="torch 2.13.0 | x"),
        Step(
            name="java",
            status="fail" if not ok else "pass",
            seconds=0.1,
            detail="Java is not installed",
            fix="apt-get install openjdk-17-jre-headless",
        ),
        Step(name="serve", status="skipped", detail="needs java, which failed"),
    ]
    return Report(
        host="ip-10-0-0-1.ec2.internal",
        backend="cpu",
        requested_backend="auto",
        started="2026-12-04T20:00:00+00:00",
        seconds=3.3,
        ok=ok,
        interrupted=interrupted,
        steps=steps,
    )


def test_doctor_json_and_doctor_md_hold_every_step_in_order_and_the_fixes(tmp_path):
    json_file, markdown_file = write(report(), tmp_path / "out")
    data = json.loads(json_file.read_text())
    assert set(data) >= {"steps", "backend", "host", "started", "seconds", "ok"}
    assert data["ok"] is False and data["backend"] == "cpu"
    assert [set(s) for s in data["steps"]] == [{"name", "status", "seconds", "detail", "fix"}] * 3
    assert [(s["name"], s["status"]) for s in data["steps"]] == [
        ("install", "pass"),
        ("java", "fail"),
        ("serve", "skipped"),
    ]
    text = markdown_file.read_text()
    rows = [row for row in text.splitlines() if row.startswith("| ") and not row.startswith("| step")]
    assert [row.split(" | ")[0] for row in rows] == ["| install", "| java", "| serve"]
    assert "torch 2.13.0 \\| x" in rows[0]  # a pipe in a detail does not break the table
    assert "NOT ready" in text and "### java" in text and "fix: apt-get install openjdk-17-jre-headless" in text
    assert "ready for tonight's run" in markdown(report(ok=True)) and "## Fixes" not in markdown(report(ok=True))


def test_the_artifact_key_is_doctor_and_the_host_in_prefects_letters():
    assert artifact_key("ip-10-0-0-1.ec2.internal") == "doctor-ip-10-0-0-1-ec2-internal"
    assert artifact_key("Build_Host 7") == "doctor-build-host-7"


def test_publishing_is_skipped_without_an_api_and_a_dead_one_is_a_warning_not_a_failure():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert publish(report()) is None
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
        said = publish(report())
    assert said.startswith("warning:") and "doctor-ip-10-0-0-1-ec2-internal" in said


@pytest.mark.parametrize(
    "steps, code",
    [
        ([Check("java", passes()), Check("compile", not_here())], 0),
        ([Check("java", fails())], 1),
        ([Check("java", lambda: (_ for _ in ()).throw(KeyboardInterrupt))], 130),
    ],
)
def test_the_command_exits_1_on_a_failed_step_130_when_interrupted_and_writes_the_report(
    steps, code, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(tasks.doctor.Doctor, "checks", lambda self: steps)
    assert command.main(["--backend", "cpu", "--out", str(tmp_path)]) == code
    out = capsys.readouterr().out
    listed = [row.split()[1] for row in out.splitlines() if row.split()[0] in ("pass", "fail", "skipped")]
    assert listed == ["java", *(["compile"] if len(steps) == 2 else [])]
    data = json.loads((tmp_path / "doctor.json").read_text())
    assert data["ok"] is (code == 0) and data["requested_backend"] == "cpu"
    assert (tmp_path / "doctor.md").is_file()


def test_a_config_the_pipeline_refuses_exits_2_before_any_check(tmp_path, capsys):
    assert command.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_doctors_serving_is_tonights_at_a_small_shape_on_free_ports():
    config = load_config()
    doctor = tasks.doctor.Doctor(config, backend="cpu", instance_type="inf2.xlarge")
    try:
        serving = doctor.serving
        assert (serving.batch_size, serving.max_length, serving.buckets()) == (1, 16, [16])
        assert serving.free_ports and serving.backend == "cpu" and serving.instance_type == "inf2.xlarge"
        assert serving.initial_workers == config.serving.initial_workers
        assert [c.name for c in doctor.checks()] == [
            "host",
            "install",
            "java",
            "backend",
            "neuron-ls",
            "compile",
            "core-released",
            "second-loader-refused",
            "serve",
            "worker-replaced",
            "telemetry",
            "stop",
        ]
    finally:
        doctor.close()


STAND_IN_BIN = REPO_ROOT / "tests" / "stand_ins" / "bin"


def doctor_on(backend: str, monkeypatch, path: str):
    """A Doctor whose backend step resolved `backend` (no accelerator here: resolved by hand), PATH as given."""
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(tools, "NEURON_TOOLS_DIR", REPO_ROOT / "no-such-directory")
    doctor = tasks.doctor.Doctor(load_config(), backend=backend)
    doctor.resolved = ResolvedServing(
        backend=backend, device_name="a device", cores=2, cores_source="test", initial_workers=2, threads_per_worker=1
    )
    return doctor


@pytest.mark.parametrize(
    "backend, said",
    [
        ("cuda", "nvidia-smi: 1 GPUs, 2048 MiB in use"),
        ("neuron", "neuron-monitor: 1 report(s), 2 NeuronCores reported, device memory 1024 MiB"),
    ],
)
def test_the_telemetry_step_reads_the_accelerators_own_tool(backend, said, monkeypatch, fake_clock):
    doctor = doctor_on(backend, monkeypatch, f"{STAND_IN_BIN}:{os.environ['PATH']}")
    # The stand-in neuron-monitor prints its report at once and exits. The doctor's wait for it is on a fake
    # clock whose every sleep lets the monitor's reader read to the end: an event, not a second's period.
    monkeypatch.setenv("STAND_IN_NEURON_MONITOR_REPORTS", "1")

    def sleep(seconds: float) -> None:
        fake_clock.sleep(seconds)
        for reader in [t for t in threading.enumerate() if t.name == "neuron-monitor"]:
            reader.join(20)

    monkeypatch.setattr(polling, "time", TimeOn(fake_clock))
    monkeypatch.setattr(polling.time, "sleep", sleep)
    try:
        assert doctor.telemetry() == said
    finally:
        doctor.close()


@pytest.mark.parametrize("backend, fix", [("cuda", "nvidia-smi"), ("neuron", "aws-neuronx-tools")])
def test_the_telemetry_step_fails_with_its_fix_when_the_tool_is_missing(backend, fix, monkeypatch, tmp_path):
    doctor = doctor_on(backend, monkeypatch, str(tmp_path))
    try:
        with pytest.raises(DoctorError) as failed:
            doctor.telemetry()
        assert fix in failed.value.fix
    finally:
        doctor.close()


def test_on_cuda_the_neuron_steps_do_not_apply_and_say_so(monkeypatch):
    doctor = doctor_on("cuda", monkeypatch, os.environ["PATH"])
    try:
        for step in (doctor.neuron_ls, doctor.core_released, doctor.second_loader_refused):
            with pytest.raises(NotApplicable, match=r"^Neuron only \(backend cuda\)$"):
                step()
    finally:
        doctor.close()


def test_the_host_step_names_the_os_glibc_and_python_and_fails_first_with_the_fix_where_the_night_cannot_run(
    monkeypatch,
):
    from tasks.doctor import steps

    def host_step(backend: str) -> Step:
        doctor = steps.Doctor(load_config(), backend=backend)
        try:
            return run_checks([check for check in doctor.checks() if check.name == "host"]).steps[0]
        finally:
            doctor.close()

    here = host_step("neuron")
    assert here.status == "pass" and re.fullmatch(r".+; GLIBC \d+\.\d+; Python 3\.1[12]\.\d+", here.detail)
    monkeypatch.setattr(steps.platform, "libc_ver", lambda: ("glibc", "2.34"))  # Amazon Linux 2023's
    al2023 = host_step("neuron")
    assert al2023.status == "fail" and "GLIBC 2.34" in al2023.detail and "needs GLIBC 2.35" in al2023.detail
    assert "Ubuntu 24.04" in al2023.fix
    assert host_step("cpu").status == "pass"  # only torch-neuronx 2.9 needs 2.35
    monkeypatch.setattr(steps.platform, "python_version", lambda: "3.10.12")
    old = host_step("cpu")
    assert old.status == "fail" and "Python 3.10.12: this project needs Python <3.13,>=3.11" in old.detail
