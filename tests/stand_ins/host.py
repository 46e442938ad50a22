"""A Neuron host made of the stand-ins, as a unit or end-to-end test sets one up.

The flow runs with a service's PATH, the way a Prefect worker under systemd starts it: neither the
environment's bin (where pip put neuronx-cc, libneuronpjrt-path, torchserve and torch-model-archiver) nor
Neuron's tool directory is on it. The stand-in compiler and libneuronpjrt-path are installed where pip installs
the real ones, and neuron-ls /
neuron-monitor sit in the directory the pipeline falls back to (tasks/tools.NEURON_TOOLS_DIR, pointed at
tests/stand_ins/bin, since this machine has no /opt/aws/neuron/bin). So a run that passes here found
every tool the way it must on a real host, not through a PATH the test arranged.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import sys
from pathlib import Path

from tasks.common import tools

STAND_INS = Path(__file__).resolve().parent
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default
# What pip installs in the environment's bin with Neuron's packages, and torch-neuronx runs by name from PATH.
ENVIRONMENT_TOOLS = (STAND_INS / "compiler" / "neuronx-cc", STAND_INS / "libneuronxla" / "libneuronpjrt-path")
STAND_IN_MARK = "Stand-in for "


@contextlib.contextmanager
def compiler_installed():
    """The stand-in neuronx-cc and libneuronpjrt-path in this environment's bin for the duration; a real one is
    left alone.

    Two test sessions on one checkout (a developer's run beside CI's, or a helper's) share that bin, so each
    holds a shared lock on a file beside it while it uses the stand-ins, and only the last one out removes them:
    the first session's teardown used to delete the compiler under the second one's running pipeline."""
    with open(tools.environment_bin() / ".neuronx-cc-stand-in.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        ours = [_install(source) for source in ENVIRONMENT_TOOLS]
        try:
            yield tools.environment_bin() / "neuronx-cc"
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted only when no other session uses them
                for target in filter(None, ours):
                    target.unlink(missing_ok=True)
            except BlockingIOError:
                pass  # another session still runs them: the last one out removes them


def _install(source: Path) -> Path | None:
    """source as the environment's console script of its name; None when a real one is there (not ours)."""
    target = tools.environment_bin() / source.name
    if target.exists() and STAND_IN_MARK not in target.read_text(errors="replace"):
        return None
    # Its interpreter named in full: a service's PATH may have no python3 on it. Written whole, then renamed,
    # so a session starting beside this one never runs half a script.
    staged = target.with_name(f".{source.name}.{os.getpid()}")
    staged.write_text(source.read_text().replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    staged.chmod(0o755)
    staged.replace(target)
    return target


def set_up(monkeypatch, tmp_path: Path, log: Path | None = None) -> None:
    """This process, its children and every TorchServe worker see the stand-ins, one core directory of
    their own, a service's PATH and no inherited NEURON_RT_*."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(STAND_INS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PATH", SERVICE_PATH)
    monkeypatch.setattr(tools, "NEURON_TOOLS_DIR", STAND_INS / "bin")
    monkeypatch.setenv("TORCH_NEURONX_STAND_IN_CORES", str(tmp_path / "cores"))
    if log is not None:
        monkeypatch.setenv("TORCH_NEURONX_STAND_IN_LOG", str(log))
    for key in [key for key in os.environ if key.startswith("NEURON_RT_")]:
        monkeypatch.delenv(key)
    importlib.invalidate_caches()


def as_the_pipeline_starts_it(monkeypatch) -> None:
    """This process as the pipeline starts a child or a TorchServe worker: this environment's bin first on PATH
    (tasks/common/tools.with_environment_bin), where torch_neuronx finds libneuronpjrt-path and neuronx-cc."""
    monkeypatch.setenv("PATH", tools.with_environment_bin(dict(os.environ))["PATH"])


def tear_down() -> None:
    sys.modules.pop("torch_neuronx", None)
    sys.modules.pop("neuron_runtime_stand_in", None)
