"""The stand-in Neuron runtime's core reservations: shared by torch_neuronx/ (which takes cores) and
bin/neuron-ls (which lists their holders). Standard library only: neuron-ls runs without torch.

A reservation is a file `nc<N>` in $TORCH_NEURONX_STAND_IN_CORES holding its owner's pid. A core is
held while its owner runs, and for STAND_IN_CORE_RELEASE_S (default 1 s) after the owner was first
seen dead: the driver frees a process's cores in its exit path, after waiting for a device reset in
flight (README.md, "core release"), so a replacement that loads at once can find its core still held.
The moment of death is not observable after the fact, so the delay counts from the first look that
finds the owner gone: never earlier than the real release.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

RELEASE_ENV = "STAND_IN_CORE_RELEASE_S"


def cores_dir() -> Path:
    # Host-wide, like the runtime's ownership: not under TMPDIR, which TorchServe changes per server.
    return Path(os.environ.get("TORCH_NEURONX_STAND_IN_CORES") or f"/tmp/torch-neuronx-stand-in-cores-{os.getuid()}")


def total_cores() -> int:
    """The host's NeuronCores, as bin/neuron-ls lists them."""
    return int(os.environ.get("STAND_IN_NEURON_DEVICES", "1")) * int(os.environ.get("STAND_IN_CORES_PER_DEVICE", "2"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # an exited process awaiting its parent has closed its device


@contextlib.contextmanager
def locked():
    """The reservations, one process at a time (as the driver serialises its bookkeeping)."""
    directory = cores_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield directory


def holders(directory: Path) -> dict[int, int]:
    """{core: pid} of every core still held: a live owner's, or a dead owner's not yet released.
    Call inside locked(): a dead owner's file is stamped with its release time."""
    found = {}
    delay = float(os.environ.get(RELEASE_ENV, "1.0"))
    for lock in directory.glob("nc*"):
        try:
            pid, *released = lock.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue
        if alive(pid):
            found[int(lock.name[2:])] = pid
            continue
        if not released:  # first seen dead: the driver is still tearing the process down
            released = [str(time.time() + delay)]
            lock.write_text(f"{pid} {released[0]}")
        if time.time() < float(released[0]):
            found[int(lock.name[2:])] = pid
        else:
            lock.unlink(missing_ok=True)
    return found


def owners() -> dict[int, int]:
    """{core: pid} for every core held now (what neuron-ls lists)."""
    with locked() as directory:
        return holders(directory)
