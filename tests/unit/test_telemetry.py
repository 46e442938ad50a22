"""Telemetry during the load: each accelerator adapter against a stand-in that prints the real tool's
output shape (tests/stand_ins/bin), and TorchServe's memory per role.

The sampler's period passes on a fake clock (tests/unit/fake_time.py): a test moves the clock by periods and
the sampler takes one sample each. The neuron-monitor stand-in prints its reports at once
(STAND_IN_NEURON_MONITOR_REPORTS) instead of one per second."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tasks.measure import telemetry
from tasks.measure.telemetry import NVIDIA_SMI_QUERY, Telemetry, parse_neuron_monitor, parse_nvidia_smi

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins" / "bin"


@pytest.fixture
def stand_ins_on_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{STAND_INS}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def clock(fake_clock, monkeypatch):
    """The sampler's wait between samples on a fake clock."""
    monkeypatch.setattr(telemetry, "_wait", fake_clock.wait)
    return fake_clock


def test_neuron_monitor_reports_are_parsed_per_core_with_device_memory(tmp_path):
    # The stand-in, like the tool, reports until stopped (here: one report at once): read its first report.
    config = tmp_path / "monitor.json"
    config.write_text(json.dumps(telemetry.NeuronMonitor(period=1).config()))
    env = {**os.environ, "STAND_IN_NEURON_UTILIZATION": "62.5", "STAND_IN_NEURON_MONITOR_REPORTS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(STAND_INS / "neuron-monitor"), "-c", str(config)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = process.stdout.readline()
    finally:
        process.kill()
        process.wait()
    cores, device = parse_neuron_monitor(line)
    assert cores == {"4242/0": 62.5, "4242/1": 62.5} and device == 2**30
    assert parse_neuron_monitor("not json") is None and parse_neuron_monitor('{"system_data": {}}') is None


def test_nvidia_smi_lines_are_parsed_per_gpu_and_na_is_skipped():
    assert parse_nvidia_smi("63, 2048, 81559\n12, 100, 81559\n") == [(63.0, 2048.0, 81559.0), (12.0, 100.0, 81559.0)]
    assert parse_nvidia_smi("[N/A], 10, 20\n") == []


def _server():
    """No server: the sampler finds no processes, so only the adapter is exercised."""
    return lambda: {"workers": [], "frontend": []}


def test_neuron_adapter_runs_neuron_monitor_from_the_dlami_directory_at_its_own_period(neuron_host, monkeypatch, clock):
    """A service's PATH (tests/stand_ins/host.py): neuron-monitor is found where the DLAMI installs it, and
    asked for a report a second, not its default five. Every report it printed is read, up to its stop."""
    monkeypatch.setenv("STAND_IN_NEURON_UTILIZATION", "37.5")
    monkeypatch.setenv("STAND_IN_NEURON_MONITOR_REPORTS", "2")
    with Telemetry(_server(), "neuron", period=0.05) as sampler:
        sampler.adapter._process.wait(timeout=20)  # it printed its reports (at once) and exited
    assert sampler.adapter.config()["period"] == "1s"  # whole seconds, as the tool's documented examples
    used = sampler.accelerator()
    assert used.kind == "neuron" and used.samples == 2 and used.note is None
    assert used.utilization_pct_mean == pytest.approx(37.5) and set(used.per_unit_pct) == {"4242/0", "4242/1"}
    assert used.device_memory_used_mib == pytest.approx(1024.0)


def test_cuda_adapter_asks_nvidia_smi_its_query(stand_ins_on_path, monkeypatch, clock):
    monkeypatch.setenv("STAND_IN_GPUS", "2")
    with Telemetry(_server(), "cuda", period=0.05) as sampler:
        clock.until_waiting(1)  # the sampler, waiting for its first period
        clock.advance(0.12)  # two periods: nvidia-smi asked twice
    used = sampler.accelerator()
    assert used.kind == "cuda" and used.samples == 2 and used.note is None
    assert used.utilization_pct_mean == pytest.approx(63.0) and set(used.per_unit_pct) == {"0", "1"}
    assert used.device_memory_used_mib == 4096.0 and used.device_memory_total_mib == 2 * 81559.0
    assert " ".join(NVIDIA_SMI_QUERY) in used.source


def test_a_missing_tool_costs_its_figures_only(monkeypatch, tmp_path, clock):
    monkeypatch.setenv("PATH", str(tmp_path))
    for backend, tool in (("neuron", "neuron-monitor"), ("cuda", "nvidia-smi")):
        with Telemetry(_server(), backend, period=0.05) as sampler:
            clock.until_waiting(1)
            clock.advance(0.1)
        used = sampler.accelerator()
        assert used.utilization_pct_mean is None and tool in used.note


def test_cpu_adapter_and_memory_follow_the_servers_processes_by_role(monkeypatch, clock):
    # A child stands in for a worker (TorchServe's engine calls one a worker by its command line:
    # tests/unit/test_server_config.py). Its CPU % is psutil's reading (faked: a reading over a real interval
    # would need real time to pass), taken per worker.
    code = "import sys\nx = bytearray(64 * 2**20)\nprint('ready', flush=True)\nsys.stdin.read()"
    worker = subprocess.Popen(
        [sys.executable, "-c", code, "model_service_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    readings = iter(range(10, 100, 10))
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: float(next(readings)))
    try:
        assert worker.stdout.readline().strip() == "ready"  # allocated
        roles = lambda: {"workers": [psutil.Process(worker.pid)], "frontend": []}  # noqa: E731
        with Telemetry(roles, "cpu", period=0.1) as sampler:
            clock.until_waiting(1)
            clock.advance(0.45)  # four periods
    finally:
        worker.kill()
        worker.wait()
    used, memory = sampler.accelerator(), sampler.memory()
    assert used.kind == "cpu" and list(used.per_unit_pct) == [str(worker.pid)]
    # The first reading (10) only starts psutil's count; then one per period and one at the stop.
    assert used.samples == 5 and used.utilization_pct_mean == pytest.approx(40.0) and used.utilization_pct_max == 60
    assert memory.samples == 6 and memory.workers_rss_mib >= 64 and memory.frontend_rss_mib == 0
    assert memory.total_rss_mib == memory.workers_rss_mib == memory.worker_rss_mib
