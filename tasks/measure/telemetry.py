"""Telemetry while the load runs: the server's memory, and the accelerator through its own tool.

One sampler thread, every `period` s between start() and stop():
  memory       RSS of the server's workers (replicas) and of the rest of it (psutil), peaks;
  accelerator  one adapter per backend, each reading its tool's real output shape:
    neuron  `neuron-monitor -c <config>` prints one JSON object per period on stdout; NeuronCore utilisation from
            neuron_runtime_data[].report.neuroncore_counters.neuroncores_in_use.<core>.neuroncore_utilization,
            device memory from ...memory_used.neuron_runtime_used_bytes.neuron_device;
    cuda    `nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits`,
            one line per GPU (MiB);
    cpu     the workers' (replicas') own CPU % (psutil), per process: 100 = one core busy.
A tool that is missing or fails costs its figures only: the result says why in `note`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from tasks.common import tools
from tasks.common.processes import end
from tasks.measure.results import Accelerator, Memory
from tasks.measure.served import FRONTEND, WORKERS

NVIDIA_SMI_QUERY = ["--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"]
MIB = 2**20


# --- the tools' output, parsed --------------------------------------------------------------------


def parse_neuron_monitor(line: str) -> tuple[dict[str, float], float] | None:
    """One neuron-monitor period: ({"<runtime pid>/<core>": utilisation %}, device bytes in use); None
    for a line that is not a report."""
    try:
        report = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(report, dict) or "neuron_runtime_data" not in report:
        return None
    cores, device_bytes = {}, 0.0
    for runtime in report.get("neuron_runtime_data") or []:
        data = runtime.get("report") or {}
        in_use = (data.get("neuroncore_counters") or {}).get("neuroncores_in_use") or {}
        for core, counters in in_use.items():
            cores[f"{runtime.get('pid')}/{core}"] = float(counters.get("neuroncore_utilization", 0.0))
        used = (data.get("memory_used") or {}).get("neuron_runtime_used_bytes") or {}
        device_bytes += float(used.get("neuron_device", 0.0))
    return cores, device_bytes


def parse_nvidia_smi(text: str) -> list[tuple[float, float, float]]:
    """(utilisation %, memory used MiB, memory total MiB) per GPU, from the csv,noheader,nounits query."""
    rows = []
    for line in text.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        try:
            rows.append(tuple(float(part) for part in parts[:3]))
        except ValueError:  # "[N/A]" on some GPUs
            continue
    return [row for row in rows if len(row) == 3]


# --- the adapters ----------------------------------------------------------------------------------


class NeuronMonitor:
    """neuron-monitor, running for the whole load; its periods are collected by a reader thread.

    Without a configuration it reports every 5 s, too seldom for a load of a few seconds: it is given one
    asking for the two metric groups read here at the sampler's period (whole seconds, as its documented
    examples write them)."""

    kind, tool = "neuron", "neuron-monitor"

    def __init__(self, period: float = 1.0) -> None:
        self.period = max(1, round(period))
        self.reports: list[tuple[dict[str, float], float]] = []
        self.note: str | None = None
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._config: tempfile.TemporaryDirectory | None = None

    def config(self) -> dict:
        return {
            "period": f"{self.period}s",
            "neuron_runtimes": [
                {"tag_filter": ".*", "metrics": [{"type": "neuroncore_counters"}, {"type": "memory_used"}]}
            ],
        }

    def start(self) -> None:
        path = tools.neuron_tool(self.tool)
        if path is None:
            self.note = f"{self.tool} not found on PATH nor in {tools.NEURON_TOOLS_DIR} (aws-neuronx-tools)"
            return
        self._config = tempfile.TemporaryDirectory(prefix="neuron-monitor-")
        config = Path(self._config.name) / "monitor.json"
        config.write_text(json.dumps(self.config()))
        self._process = subprocess.Popen(
            [path, "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._reader = threading.Thread(target=self._read, name="neuron-monitor", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        lines = self._process.stdout if self._process is not None else None  # stdout=PIPE: never None
        for line in lines or ():
            if (report := parse_neuron_monitor(line)) is not None:
                self.reports.append(report)

    def sample(self) -> None:
        """neuron-monitor reports on its own period."""

    def stop(self) -> None:
        if self._process is None:
            return
        end(self._process, grace=5)
        if self._reader is not None:
            self._reader.join(5)
        if self._config is not None:
            self._config.cleanup()

    def result(self) -> Accelerator:
        per_core: dict[str, list[float]] = {}
        for cores, _ in self.reports:
            for core, value in cores.items():
                per_core.setdefault(core, []).append(value)
        each = [float(np.mean(values)) for values in per_core.values()]
        used = [device for _, device in self.reports]
        note = self.note or (None if self.reports else "neuron-monitor printed no report during the load")
        return Accelerator(
            kind=self.kind,
            source=self.tool,
            samples=len(self.reports),
            utilization_pct_mean=float(np.mean(each)) if each else None,
            utilization_pct_max=max((max(v) for v in per_core.values()), default=None),
            per_unit_pct={core: round(float(np.mean(v)), 2) for core, v in per_core.items()},
            device_memory_used_mib=max(used) / MIB if used else None,
            note=note,
        )


class NvidiaSmi:
    """nvidia-smi, asked once per sample."""

    kind, tool = "cuda", "nvidia-smi"

    def __init__(self) -> None:
        self.rows: list[list[tuple[float, float, float]]] = []
        self.note: str | None = None
        self._path: str | None = None

    def start(self) -> None:
        self._path = shutil.which(self.tool)
        if self._path is None:
            self.note = f"{self.tool} not on PATH"

    def sample(self) -> None:
        if self._path is None:
            return
        try:
            done = subprocess.run([self._path, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as error:
            self.note = f"{self.tool} failed: {error}"
            return
        if done.returncode != 0:
            self.note = f"{self.tool} exited {done.returncode}: {done.stderr.strip()[:200]}"
            return
        if rows := parse_nvidia_smi(done.stdout):
            self.rows.append(rows)

    def stop(self) -> None:
        pass

    def result(self) -> Accelerator:
        gpus = {
            str(i): [sample[i][0] for sample in self.rows if i < len(sample)]
            for i in range(max((len(s) for s in self.rows), default=0))
        }
        each = [float(np.mean(v)) for v in gpus.values() if v]
        used = [sum(row[1] for row in sample) for sample in self.rows]
        return Accelerator(
            kind=self.kind,
            source=f"{self.tool} {' '.join(NVIDIA_SMI_QUERY)}",
            samples=len(self.rows),
            utilization_pct_mean=float(np.mean(each)) if each else None,
            utilization_pct_max=max((max(v) for v in gpus.values() if v), default=None),
            per_unit_pct={gpu: round(float(np.mean(v)), 2) for gpu, v in gpus.items() if v},
            device_memory_used_mib=max(used) if used else None,
            device_memory_total_mib=sum(row[2] for row in self.rows[-1]) if self.rows else None,
            note=self.note or (None if self.rows else "nvidia-smi gave no reading during the load"),
        )


class ProcessCpu:
    """On the CPU the workers are the accelerator: each worker process's CPU %, from psutil."""

    kind, tool = "cpu", "psutil"

    def __init__(self, processes) -> None:
        self._processes = processes  # () -> {pid: psutil.Process} of the workers now
        self.per_worker: dict[int, list[float]] = {}
        self._seen: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self.sample()

    def sample(self) -> None:
        for pid, process in self._processes().items():
            known = self._seen.get(pid)
            try:
                if known is None:  # a process's first cpu_percent() is 0.0: it starts the count
                    self._seen[pid] = process
                    process.cpu_percent(None)
                else:
                    self.per_worker.setdefault(pid, []).append(known.cpu_percent(None))
            except psutil.Error:
                continue

    def stop(self) -> None:
        self.sample()

    def result(self) -> Accelerator:
        each = {str(pid): float(np.mean(v)) for pid, v in self.per_worker.items() if v}
        every = [x for v in self.per_worker.values() for x in v]
        return Accelerator(
            kind=self.kind,
            source="psutil cpu_percent per worker process (100 = one core)",
            samples=max((len(v) for v in self.per_worker.values()), default=0),
            utilization_pct_mean=float(np.mean(list(each.values()))) if each else None,
            utilization_pct_max=max(every, default=None),
            per_unit_pct={k: round(v, 1) for k, v in each.items()},
            note=None if each else "no worker process found",
        )


# --- the sampler -------------------------------------------------------------------------------------


def _wait(event: threading.Event, seconds: float) -> bool:
    """event.wait(seconds): the sampler's one wait between samples (the unit tests put a fake clock's here)."""
    return event.wait(seconds)


Roles = Callable[[], dict[str, list[psutil.Process]]]  # the server's live processes by role (ServedModel.processes)


def by_pid(processes: Roles, role: str) -> dict[int, psutil.Process]:
    return {process.pid: process for process in processes().get(role, [])}


def adapter_for(backend: str, processes: Roles, period: float = 1.0):
    if backend == "neuron":
        return NeuronMonitor(period)
    if backend == "cuda":
        return NvidiaSmi()
    return ProcessCpu(lambda: by_pid(processes, WORKERS))


class Telemetry:
    """with Telemetry(processes, backend, period) as telemetry: <the load>; then .memory(), .accelerator().
    processes: the server's live processes by role, asked at every sample (replicas may come and go)."""

    def __init__(self, processes: Roles, backend: str, period: float = 1.0):
        self.processes, self.period = processes, period
        self.adapter = adapter_for(backend, processes, period)
        self.rss: list[dict[str, float]] = []  # MiB per sample: frontend, workers, largest worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)

    def _sample_memory(self) -> None:
        roles = self.processes()
        sizes: dict[str, list[float]] = {WORKERS: [], FRONTEND: []}
        for role, processes in roles.items():
            values = sizes.setdefault(role, [])
            for process in processes:
                try:
                    values.append(process.memory_info().rss / MIB)
                except psutil.Error:
                    pass
        self.rss.append(
            {
                "frontend": sum(sizes[FRONTEND]),
                "workers": sum(sizes[WORKERS]),
                "worker": max(sizes[WORKERS], default=0.0),
            }
        )

    def _run(self) -> None:
        while not _wait(self._stop, self.period):
            self._sample_memory()
            self.adapter.sample()

    def __enter__(self) -> Telemetry:
        self.adapter.start()
        self._sample_memory()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(self.period + 10)
        self._sample_memory()
        self.adapter.stop()

    def memory(self) -> Memory | None:
        if not self.rss:
            return None
        return Memory(
            samples=len(self.rss),
            frontend_rss_mib=max(s["frontend"] for s in self.rss),
            workers_rss_mib=max(s["workers"] for s in self.rss),
            worker_rss_mib=max(s["worker"] for s in self.rss),
            total_rss_mib=max(s["frontend"] + s["workers"] for s in self.rss),
        )

    def accelerator(self) -> Accelerator:
        return self.adapter.result()
