"""fingerprint: which nights' benchmark figures may be compared with each other.

A short hash of everything that shapes the figures -- the engine, model, batching, workers, load, accuracy file, and
the host's type (architecture, CPU model, CPUs, memory), not its name, so a fleet of identical hosts shares its
nights -- and of nothing that does not (ports, run directory, log cadence, the regression's own settings). The
benchmark stage records it in its table artifact; the regression (tasks/measure/regression.py) compares only nights
that share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

from tasks.common.config import RunConfig
from tasks.common.sizing import ResolvedServing

NOT_COMPARED = {
    "serving": {
        "inference_port",
        "management_port",
        "metrics_port",
        "grpc_inference_port",
        "grpc_management_port",
        "free_ports",
        "engines",  # the night's list; a benchmark is of one engine, serving.engine
        "startup_timeout",
        "response_timeout",
    },
    "benchmark": {
        "enabled",
        "progress_every",
        "regression_runs",
        "regression_tolerance",
        "regression_tolerances",
        "regression_action",
        "compare_buckets",
        "compare_seconds",
        "telemetry_every",
        "stability_cv",
        "window",
    },
}


def host_type() -> dict:
    """What kind of machine: architecture, CPU model, CPUs, memory -- not its name."""
    import psutil

    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        )
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
    }


def fingerprint(config: RunConfig, resolved: ResolvedServing) -> str:
    """A short hash of everything that shapes the figures (model, batching, workers, load, accuracy
    file, host type), not of what does not (ports, run directory, log cadence, host name)."""
    accuracy_file = config.checks.accuracy_file
    data: dict[str, Any] = {
        "host": host_type(),
        "resolved": resolved.model_dump(mode="json"),
        "accuracy_file": accuracy_file.name if accuracy_file else None,
    }
    for section in ("model", "serving", "benchmark"):
        values = getattr(config, section).model_dump(mode="json")
        data[section] = {k: v for k, v in values.items() if k not in NOT_COMPARED.get(section, set())}
    # A Ray Serve night is never compared with a TorchServe night. TorchServe's hash is the one it had before there
    # were engines, so the nights already recorded stay comparable.
    serving = data["serving"]
    if serving.get("engine") == "torchserve":
        del serving["engine"]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
