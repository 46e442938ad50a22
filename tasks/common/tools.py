"""Where the pipeline finds the programs it runs, whatever PATH the flow was started with.

A Prefect worker under systemd (or cron) runs `.venv/bin/python -m flows.validate` with a service PATH
that holds neither the environment's own `bin` nor the Neuron DLAMI's `/opt/aws/neuron/bin`. So:

- the environment's tools (torchserve, torch-model-archiver, and neuronx-cc, which pip installs as a
  console script beside the interpreter) are looked up next to `sys.executable`;
- children that may compile get that directory first on their PATH, because torch_neuronx runs the
  compiler by name from PATH (tests/stand_ins/README.md cites the reports of it failing otherwise);
- Neuron's own tools (neuron-ls, neuron-monitor) are looked up on PATH, then where the DLAMI installs them.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

NEURON_TOOLS_DIR = Path("/opt/aws/neuron/bin")  # aws-neuronx-tools on the Neuron DLAMI


def environment_bin() -> Path:
    """The directory of this interpreter: a venv's `bin`. Not resolved: a venv's python is a symlink."""
    return Path(sys.executable).parent


def environment_tool(name: str) -> str | None:
    """A program this Python environment installed (its console scripts), wherever PATH points."""
    return shutil.which(name, path=str(environment_bin()))


def neuron_tool(name: str) -> str | None:
    """neuron-ls / neuron-monitor: on PATH, else where the Neuron DLAMI installs them."""
    found = shutil.which(name)
    if found:
        return found
    fallback = NEURON_TOOLS_DIR / name
    return str(fallback) if os.access(fallback, os.X_OK) else None


def with_environment_bin(env: dict[str, str]) -> dict[str, str]:
    """env with this environment's `bin` first on PATH (once), for children that run its tools by name."""
    first = str(environment_bin())
    rest = [part for part in env.get("PATH", os.defpath).split(os.pathsep) if part and part != first]
    return {**env, "PATH": os.pathsep.join([first, *rest])}
