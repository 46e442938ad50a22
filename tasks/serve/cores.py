"""NeuronCores: free before start, and one claim per worker (where the workers landed: tasks/serve/placement.py).

The Neuron runtime gives a process its visible cores when it first loads a Neuron graph and keeps them
until the process exits; a worker whose core is taken cannot load. So start refuses to begin while
another process holds a core this run's workers will take (naming it: we never stop a process we did
not start), and after registration every worker must hold a core of its own (tasks/serve/placement.py reads
it). Each worker claims its core in the server's directory (serving/claims.claim_core); neuron-ls confirms the
runtime agrees.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from serving.claims import core_claims
from tasks.common.backends import neuron_ls
from tasks.common.errors import PipelineError
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.common.processes import running as process_running

RELEASE_WAIT_S = 30.0  # how long start waits for an exited process's cores to be released
CLAIMS_DIR = "neuron_cores"  # in the server's directory: one claim file per core, holding the worker's pid


class CoresError(PipelineError):
    """NeuronCores the run needs are held elsewhere, or workers do not hold one core each."""


def claims_dir(server_dir: Path) -> Path:
    return Path(server_dir) / CLAIMS_DIR


def ensure_free(workers: int, release_wait: float = RELEASE_WAIT_S) -> None:
    """Refuse to start while a process holds a device whose cores the run's workers will claim (0..workers-1).

    neuron-ls lists holders per device, not per core, so a holder anywhere on such a device counts. A holder
    that has already exited (the compile child, a stopped night's worker) is waited for: the driver frees
    its cores in the process's exit path, and neuron-ls lists it until then.
    """

    def released() -> bool | Pending:
        listing = neuron_ls()
        if listing is None:
            return True  # nothing lists holders here; a taken core shows as the runtime's error when a worker loads
        holders = listing.holders(list(range(workers)))
        running = [p for p in holders if _running(p.pid)]
        if running:
            named = "; ".join(f"pid {p.pid} ({p.command or '?'}) on Neuron device {p.device}" for p in running)
            raise CoresError(
                f"NeuronCores this run needs are held by another process: {named}. The Neuron runtime keeps a "
                f"process's cores until it exits, so TorchServe's workers could not load; TorchServe was not "
                f"started",
                fix="stop that process (it was not started by this run, so the pipeline leaves it alone), "
                "or serve with fewer workers on other devices",
            )
        return Pending(f"exited pids {[p.pid for p in holders]} still listed") if holders else True

    try:
        wait_until(released, release_wait, "the NeuronCores of exited processes to be released")
    except TimedOut as late:
        raise CoresError(
            f"NeuronCores this run needs are still held by processes that have exited ({late.last}) "
            f"{release_wait:g} s on; TorchServe was not started",
            fix="check the Neuron driver (dmesg, neuron-ls); the Neuron runtime guide's last resort "
            "is reloading it: sudo rmmod neuron && sudo modprobe neuron",
        ) from None


def _running(pid: int) -> bool:
    try:
        return process_running(psutil.Process(pid))
    except psutil.Error:
        return False


def spare_core(server_dir: Path, cores: int) -> int:
    """A NeuronCore no process holds, for a short-lived child beside the served workers (the ceiling).

    Decided before anything loads, because a refused load costs the child its start-up: this server's
    workers' claims say which cores they hold, and neuron-ls lists every other holder per device (not
    per core), so a device with a holder that is not one of our workers has no spare core.
    """
    claimed = core_claims(claims_dir(server_dir))
    ours = set(claimed.values())
    listing = neuron_ls()
    others = [p for p in listing.processes if p.pid not in ours] if listing is not None else []
    elsewhere = {core for p in others for core in p.cores}
    free = [core for core in range(cores) if core not in claimed and core not in elsewhere]
    if free:
        return free[0]
    held = [f"NeuronCore {core}: worker pid {pid}" for core, pid in sorted(claimed.items())]
    held += [f"pid {p.pid} ({p.command or '?'}) on Neuron device {p.device}" for p in others]
    raise CoresError(
        f"no NeuronCore is free: all {cores} are held ({'; '.join(held)})",
        fix="serve with fewer workers than NeuronCores to measure the ceiling on a spare one",
    )
