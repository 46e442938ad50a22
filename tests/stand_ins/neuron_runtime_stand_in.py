"""The stand-in Neuron runtime's core reservations: shared by torch_neuronx/ (which takes cores) and
bin/neuron-ls (which lists their holders). Standard library only: neuron-ls runs without torch.

A reservation is a file `nc<N>` in $TORCH_NEURONX_STAND_IN_CORES holding its owner's pid. A core is
held while its owner runs, and for STAND_IN_CORE_RELEASE_S (default 1 s) after the owner was first
seen dead: the driver frees a process's cores in its exit path, after waiting for a device reset in
flight (README.md, "core release"), so a replacement that loads at once can find its core still held.
The moment of death is not observable after the fact, so the delay counts from the first look that
finds the owner gone: never earlier than the real release.

reserve() is the runtime's nrt_init, which torch_neuronx/ calls (and re-exports): here, so that a process
holding a core for a test need not import torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
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


LOG_ENV = "TORCH_NEURONX_STAND_IN_LOG"
# How a refused process learns of it: "raise" (default), torch-neuronx's RuntimeError; "abort", the process dies of
# the uncaught c10::Error, SIGABRT, as huggingface/optimum-neuron#377 shows on Inf2 (README.md, "refusals").
REFUSAL_ENV = "STAND_IN_NEURON_REFUSAL"
_held: list[int] | None = None  # this process's cores, once reserved
# What torch-neuronx raises when the runtime cannot take the cores (the NRT log line goes to stderr).
RUNTIME_NOT_INITIALIZED = (
    "The PyTorch Neuron Runtime could not be initialized. Neuron Driver issues are logged "
    "to your system logs. See the Neuron Runtime's troubleshooting guide for help on "
    "this topic."
)


def _record(event: str, **facts) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **facts}) + "\n")


def reserve() -> list[int]:
    """The runtime's nrt_init: take this process's cores, or fail as torch-neuronx does.

    Refused, the runtime logs its NRT line to stderr and Python sees torch-neuronx's own text, not the
    log line -- or, with STAND_IN_NEURON_REFUSAL=abort, the process dies of it (README.md, "refusals").
    Nothing is kept from a refusal: a later load tries again.
    """
    global _held
    if _held is not None:
        return _held
    with locked() as directory:
        taken = {core: pid for core, pid in holders(directory).items() if pid != os.getpid()}
        free = [core for core in range(total_cores()) if core not in taken]
        visible, count = os.environ.get("NEURON_RT_VISIBLE_CORES"), os.environ.get("NEURON_RT_NUM_CORES")
        if visible:  # wins over NUM_CORES
            wanted = _parse_visible(visible)
        elif count:
            wanted = free[: int(count)] if len(free) >= int(count) else list(range(int(count)))
        else:
            wanted = list(range(total_cores()))
        if any(core in taken or core >= total_cores() for core in wanted):
            _refuse(wanted, taken, len(free))
        for core in wanted:
            (directory / f"nc{core}").write_text(str(os.getpid()))
    _held = wanted
    _record("reserve", cores=wanted)
    return wanted


def _refuse(wanted: list[int], taken: dict[int, int], available: int) -> None:
    """The runtime's NRT line on stderr (today's wording: users' 2026 logs), then torch-neuronx's error: raised, or
    the process aborted by it."""
    abort = os.environ.get(REFUSAL_ENV) == "abort"
    _record("reserve-failed", requested=wanted, holders=taken, refusal="abort" if abort else "raise")
    print(
        f"{time.strftime('%Y-%b-%d %H:%M:%S')} {os.getpid()}:{os.getpid()} ERROR  NRT:nrt_allocate_neuron_cores  "
        f"Logical Neuron Core(s) not available - Requested:lnc{wanted[0]}-lnc{wanted[-1]} Available:{available} "
        "Logical Core size:1 (cores busy, ret=-16)",
        file=sys.stderr,
        flush=True,
    )
    if abort:
        print(
            f"terminate called after throwing an instance of 'c10::Error'\n  what():  {RUNTIME_NOT_INITIALIZED}\n"
            "Exception raised from initialize at neuron_op/runtime.cpp (most recent call first):",
            file=sys.stderr,
            flush=True,
        )
        os.abort()
    raise RuntimeError(RUNTIME_NOT_INITIALIZED)


def _parse_visible(text: str) -> list[int]:
    cores = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores
