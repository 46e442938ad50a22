"""Which NeuronCore each worker holds, and which GPU each was given: a file per claim in the server's claims
directory (CORE_CLAIMS_ENV), under a file lock, freed by its owner's exit as the Neuron runtime frees its cores.

Shipped in the .mar beside the handler and serving/contract.py (the handler claims its core as it loads), and
read by the pipeline (tasks/serve/cores.py, placement.py). Light like the contract: no torch, no TorchServe.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

# How long a starting worker waits for a core that a dying worker still holds (see claim_core and
# serving/handler.py's load_graphs): well inside TorchServe's own worker start-up timeout.
CLAIM_WAIT_S = 30.0
# The words of a refused NeuronCore (held by another process), in the exception or in the process's last lines
# when the refusal aborted it (c10::Error, SIGABRT): torch-neuronx's "The PyTorch Neuron Runtime could not be
# initialized" (aws-neuron-sdk#718; huggingface/optimum-neuron#377), its placement API's "Neuron runtime cannot be
# initialized" (aws-neuron-samples#44), and the runtime's own NRT line as its versions word it: "NeuronCore(s) not
# available" (nrt-troubleshoot.rst), "Virtual Neuron Core(s) not available" (aws-neuron-sdk#1065), "Logical Neuron
# Core(s) not available - Requested:lnc0-lnc0 ... (cores busy, ret=-16)" (users' 2026 logs).
NEURON_CORE_REFUSED = re.compile(
    r"(could not|cannot) be initialized|Neuron ?Core\(s\) not available|cores busy, ret=-16", re.I
)


def claim_core(claims_dir: Path, cores: int, pid: int, wait_s: float = CLAIM_WAIT_S, poll_s: float = 0.25) -> int:
    """The lowest NeuronCore no live worker of this server has claimed, now claimed for `pid`.

    Why not TorchServe's gpu_id: TorchServe hands out gpu_id only for CUDA-style GPUs (number_of_gpu > 0,
    round-robin), so a restarted worker can land on a core a live worker holds. A claim held by a pid is
    freed by that process's exit, as the Neuron runtime frees its cores; the lock makes workers that
    start together take distinct cores.

    Every core claimed is not final at once: TorchServe starts a replacement while the worker it replaces
    may still be exiting (killed after a response timeout), so wait up to wait_s for a claim to be freed.
    """
    import fcntl

    claims_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        with open(claims_dir / ".lock", "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            held = core_claims(claims_dir)
            mine = [core for core, owner in held.items() if owner == pid]
            free = [core for core in range(cores) if core not in held]
            if mine or free:
                core = mine[0] if mine else free[0]
                (claims_dir / f"core_{core}").write_text(str(pid))
                return core
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"all {cores} NeuronCores are claimed by live workers {sorted(held.values())} "
                f"and none was freed within {wait_s:g} s; a worker needs one of its own: use "
                f"{cores} workers or fewer"
            )
        time.sleep(poll_s)


def record_core(claims_dir: Path, core: int, pid: int) -> None:
    """A NeuronCore another placer chose for `pid` (Ray gives each replica its own through NEURON_RT_VISIBLE_CORES),
    recorded as claim_core records its own choice, so the core map and the ceiling's spare core read one place.
    A live other owner means two processes were given one core: refused, naming both, before either loads."""
    import fcntl

    claims_dir.mkdir(parents=True, exist_ok=True)
    with open(claims_dir / ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        owner = core_claims(claims_dir).get(core)
        if owner is not None and owner != pid:
            raise RuntimeError(f"NeuronCore {core} was given to pid {pid} but live pid {owner} holds it already")
        (claims_dir / f"core_{core}").write_text(str(pid))


def record_gpu(claims_dir: Path, pid: int, gpu: int) -> None:
    """cuda: the GPU TorchServe gave this worker (gpu_id, handed round-robin; several workers may share one,
    overlapping one's tokenization with another's GPU work). A file per worker, read back by gpu_map."""
    claims_dir.mkdir(parents=True, exist_ok=True)
    (claims_dir / f"gpu_worker_{pid}").write_text(str(gpu))


def gpu_claims(claims_dir: Path) -> dict[int, int]:
    """{worker pid: GPU} of the workers still running."""
    return _live_owners(claims_dir, "gpu_worker_", by_pid=True)


def core_claims(claims_dir: Path) -> dict[int, int]:
    """{core: pid} of the claims whose process is still running."""
    return _live_owners(claims_dir, "core_", by_pid=False)


def _live_owners(claims_dir: Path, prefix: str, by_pid: bool) -> dict[int, int]:
    """Files `<prefix><n>` of a claims directory whose process is still running: {n: content} when n is the
    pid (by_pid), else {n: pid in the file}."""
    import psutil

    found = {}
    for path in Path(claims_dir).glob(f"{prefix}*"):
        try:
            number, content = int(path.name[len(prefix) :]), int(path.read_text())
            pid = number if by_pid else content
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found[number] = content
        except (OSError, ValueError, psutil.Error):
            continue
    return found
