"""Which accelerator a run serves on, and how many of its units this host has: NeuronCores, GPUs, physical CPU
cores (`detect`). How many workers that makes is tasks/common/sizing.py's.

neuron: torch_neuronx compiles for one NeuronCore; each TorchServe worker holds one copy, so workers may never
outnumber NeuronCores. cuda: GPUs are shared, as many workers as the CPU cores per GPU allow. cpu: one worker per
physical core. backend=auto picks neuron when torch_neuronx imports and a NeuronCore is visible, else cuda when
available, else cpu.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import psutil
import yaml
from pydantic import BaseModel

from tasks.common.errors import PipelineError
from tasks.common.runlog import stage_logger
from tasks.common.tools import neuron_tool
from tasks.common.versions import package_versions

NEURON_CORES_FILE = Path(__file__).resolve().parents[2] / "configs" / "neuron_cores.yaml"
# Where a host can say what it is when neuron-ls is not there (set it in the worker's environment).
INSTANCE_TYPE_ENV = "INSTANCE_TYPE"
NEURON_LS_FLAGS = ("--json-output", "-j")
UNKNOWN_OPTION = re.compile(r"unrecognized|unknown (option|argument)|invalid option|no such option", re.I)


class BackendError(PipelineError, ValueError):
    """The requested backend cannot run here, or its cores cannot be counted.

    A ValueError too: resolve_serving reports it as a configuration the pipeline refuses.
    """


class Accelerator(BaseModel):
    backend: str
    device_name: str
    cores: int
    cores_source: str
    versions: dict[str, str] = {}


def detect(requested: str = "auto", instance_type: str | None = None) -> Accelerator:
    """The accelerator to serve on, with its core count and where that count came from."""
    if requested == "auto":
        import torch  # here, not at import: the command line validates a config without paying for torch

        if importlib.util.find_spec("torch_neuronx") and _neuron_visible():
            requested = "neuron"
        elif torch.cuda.is_available():
            requested = "cuda"
        else:
            requested = "cpu"
    return {"neuron": _neuron, "cuda": _cuda, "cpu": _cpu}[requested](instance_type)


def _neuron_visible() -> bool:
    return neuron_ls_path() is not None or any(Path("/dev").glob("neuron*"))


def _neuron(instance_type: str | None) -> Accelerator:
    if importlib.util.find_spec("torch_neuronx") is None:
        raise BackendError(
            "backend neuron: torch_neuronx is not installed",
            fix="install torch-neuronx from Neuron's package index (see docs/neuron.md, 'Running on Inf2 / Trn1'), "
            "or choose serving.backend: auto",
        )
    cores, source = neuron_core_count(instance_type)
    return Accelerator(
        backend="neuron",
        device_name=f"{cores} NeuronCores",
        cores=cores,
        cores_source=source,
        versions=package_versions("torch-neuronx", "neuronx-cc"),
    )


def neuron_core_count(instance_type: str | None = None) -> tuple[int, str]:
    """From neuron-ls's JSON listing when present, else from the instance type through the table."""
    listing = neuron_ls()
    if listing is not None and listing.cores:
        return listing.cores, listing.source
    instance_type = instance_type or os.environ.get(INSTANCE_TYPE_ENV)
    table = yaml.safe_load(NEURON_CORES_FILE.read_text())
    if not instance_type:
        raise BackendError(
            "cannot count NeuronCores: neuron-ls is not available and no instance type is known",
            fix=f"set serving.instance_type (or {INSTANCE_TYPE_ENV}) to one of {', '.join(table)}",
        )
    if instance_type not in table:
        raise BackendError(
            f"instance type {instance_type!r} is not in {NEURON_CORES_FILE.name}",
            fix=f"use one of {', '.join(table)}, or add it to that file",
        )
    return int(table[instance_type]), f"instance type {instance_type} ({NEURON_CORES_FILE.name})"


class NeuronProcess(BaseModel):
    """A process holding NeuronCores, as neuron-ls names it (per device: it lists no core ids)."""

    pid: int
    command: str
    device: int
    cores: list[int]  # the device's cores: the process holds one or more of them


class NeuronListing(BaseModel):
    source: str  # the command that answered, e.g. "neuron-ls --json-output"
    cores: int
    processes: list[NeuronProcess]

    def holders(self, cores: list[int]) -> list[NeuronProcess]:
        """The processes on the devices these cores belong to."""
        return [p for p in self.processes if set(p.cores) & set(cores)]


def neuron_ls_path() -> str | None:
    """neuron-ls on PATH, else where the Neuron DLAMI installs it (not on a service's default PATH)."""
    return neuron_tool("neuron-ls")


def neuron_ls() -> NeuronListing | None:
    """Devices, cores and core-holding processes from neuron-ls; None without a neuron-ls that answers.

    --json-output first, then -j where a neuron-ls refuses the long option: both are documented spellings.
    A neuron-ls that is there but does not answer is warned about, naming why (see _unanswered).
    """
    path = neuron_ls_path()
    if path is None:
        return None
    for flag in NEURON_LS_FLAGS:
        try:
            done = subprocess.run([path, flag], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            _unanswered(f"{path} {flag}", f"{type(error).__name__}: {error}")
            return None
        if done.returncode == 0:
            listing = _parse_listing(done.stdout, f"neuron-ls {flag}")
            if listing is not None:
                return listing
            _unanswered(f"{path} {flag}", f"its output is not JSON: {done.stdout.strip()[:200]!r}")
            return None
        if not UNKNOWN_OPTION.search(done.stderr + done.stdout):
            said = (done.stderr.strip() or done.stdout.strip())[-300:]
            _unanswered(f"{path} {flag}", f"exit status {done.returncode}: {said!r}")
            return None
    _unanswered(str(path), f"it refuses both {' and '.join(NEURON_LS_FLAGS)}")
    return None


def _unanswered(command: str, why: str) -> None:
    """What a run goes on without when neuron-ls is there but does not answer, said once per ask."""
    stage_logger(__name__).warning(
        "%s did not answer (%s): going on without its listing -- NeuronCores are counted from the instance type, "
        "and the processes holding them are not checked",
        command,
        why,
    )


def _parse_listing(text: str, source: str) -> NeuronListing | None:
    try:
        listing = json.loads(text)
    except json.JSONDecodeError:
        return None
    # A list of devices; newer releases may wrap it in an object.
    devices = listing if isinstance(listing, list) else listing.get("neuron_devices", [])
    devices = [device for device in devices if isinstance(device, dict)]
    processes, first = [], 0
    for index, device in enumerate(devices):
        count = int(device.get("nc_count", 0))
        core_ids = [int(c) for c in device.get("neuroncore_ids") or range(first, first + count)]
        first += count
        for process in device.get("neuron_processes") or []:
            processes.append(
                NeuronProcess(
                    pid=int(process.get("pid", 0)),
                    command=str(process.get("command", "")),
                    device=int(device.get("neuron_device", index)),
                    cores=core_ids,
                )
            )
    return NeuronListing(source=source, cores=first, processes=processes)


def _cuda(instance_type: str | None) -> Accelerator:
    import torch

    if not torch.cuda.is_available():
        raise BackendError("backend cuda: no CUDA GPU is visible to torch", fix="choose serving.backend: auto or cpu")
    count = torch.cuda.device_count()
    return Accelerator(
        backend="cuda",
        device_name=torch.cuda.get_device_name(0),
        cores=count,
        cores_source="torch.cuda.device_count()",
        versions={"cuda": str(torch.version.cuda)},
    )


def _cpu(instance_type: str | None) -> Accelerator:
    return Accelerator(
        backend="cpu", device_name=_cpu_name(), cores=physical_cores(), cores_source="psutil.cpu_count(logical=False)"
    )


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
