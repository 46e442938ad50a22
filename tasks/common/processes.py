"""Processes we started: named so a recycled pid is never ours, one way to stop them, one way to quote their logs.

ProcessRef is what server.json and the local helper's pid files record. stop() is the one
escalating stop used for TorchServe and for the local Prefect server, workers and flow runs:
SIGTERM to the processes that stop the rest gracefully, wait, SIGTERM whatever else is left,
then SIGKILL. tail() is how any error quotes a process's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from pydantic import BaseModel

# A start time is read from /proc with jiffy resolution; two readings of one process agree to well within this.
SAME_START_S = 0.01


class ProcessRef(BaseModel):
    """A pid plus its start time, so a recycled pid is never mistaken for ours.

    The start is compared as seconds after boot (see created_now). psutil's create_time is the kernel's start in
    ticks after boot plus the boot time as the wall clock reads it now, so a step of the clock (NTP on a nightly
    host; 30 s seen on this project's test host) moved every create_time: a server's record then named no live
    process, and its stop left TorchServe running. boot_time is read with create_time and kept beside it."""

    pid: int
    create_time: float  # s since the epoch, as the clock read when recorded
    boot_time: float | None = None  # the boot time read with it; None in a record written before it was kept

    @classmethod
    def of(cls, process: psutil.Process) -> ProcessRef:
        return cls(pid=process.pid, create_time=process.create_time(), boot_time=psutil.boot_time())

    @classmethod
    def parse(cls, line: str) -> ProcessRef:
        """From "pid create_time boot_time" (or an older "pid create_time"), the form of a pid file."""
        pid, created, *boot = line.split()
        return cls(pid=int(pid), create_time=float(created), boot_time=float(boot[0]) if boot else None)

    def line(self) -> str:
        return f"{self.pid} {self.create_time}" + ("" if self.boot_time is None else f" {self.boot_time}")

    def created_now(self) -> float:
        """Its create_time as psutil reads it now: the start after boot plus today's boot time (an older record's
        create_time as it is). Read once per comparison, not once per process compared."""
        return self.create_time if self.boot_time is None else self.create_time - self.boot_time + psutil.boot_time()

    def alive(self) -> psutil.Process | None:
        """The running process this names, or None if it ended (see `running`) or the pid was reused."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.created_now()) < SAME_START_S and running(process):
                return process
        except psutil.Error:
            pass
        return None


def descendants(refs: Iterable[ProcessRef], recursive: bool = True) -> list[ProcessRef]:
    """The live children (grandchildren too, if recursive) of the live processes named, not already named."""
    refs = list(refs)
    seen = {ref.pid for ref in refs}
    found = []
    for ref in refs:
        process = ref.alive()
        try:
            children = process.children(recursive=recursive) if process else []
        except psutil.Error:
            continue
        for child in children:
            if child.pid in seen:
                continue
            try:
                found.append(ProcessRef.of(child))
                seen.add(child.pid)
            except psutil.Error:
                pass  # it ended while we looked
    return found


def live_tree(refs: Iterable[ProcessRef]) -> list[psutil.Process]:
    """The live processes named and all their live descendants, each once (where a server's CPU and memory go)."""
    refs = list(refs)
    found: dict[int, psutil.Process] = {}
    for ref in [*refs, *descendants(refs)]:
        process = ref.alive()
        if process is not None:
            found.setdefault(process.pid, process)
    return list(found.values())


def group_members(leader: ProcessRef) -> list[ProcessRef]:
    """The live processes of the process group that `leader`, a session leader we started, leads -- its
    orphans included: a child it spawned just before it died is no longer its descendant, but stays in
    its group. Empty when the leader's pid now names another process (then its group is gone too: the
    kernel hands out no pid that is still some group's id)."""
    leader_created = leader.created_now()
    try:
        if abs(psutil.Process(leader.pid).create_time() - leader_created) >= SAME_START_S:
            return []  # its pid was reused, so its group is gone
    except psutil.Error:
        pass  # the leader is gone; its group may live on
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == leader.pid and process.create_time() >= leader_created - SAME_START_S:
                ref = ProcessRef.of(process)
                if ref.alive():
                    members.append(ref)
    return members


@dataclass
class Stopped:
    stopped: int  # processes that were alive when the stop began
    escalated: list[int] = field(default_factory=list)  # pids still alive after the graceful wait
    survivors: list[int] = field(default_factory=list)  # pids alive even after SIGKILL


def stop(
    refs: Iterable[ProcessRef],
    grace: float,
    first: Callable[[list[psutil.Process]], list[psutil.Process]] | None = None,
    group: bool = False,
    settle: float = 5.0,
) -> Stopped:
    """Stop the processes named; return what it took and what survived.

    SIGTERM goes to the processes `first` picks from the live ones (all of them without it),
    then up to `grace` s for everything to exit. If some process that got no SIGTERM is still
    there, all that are left get one and `settle` s; then SIGKILL and `settle` s more.
    `group` signals each process's whole process group (for session leaders we started).
    A ref whose pid now belongs to another process is skipped, never signalled.
    """
    processes = [p for p in (ref.alive() for ref in refs) if p is not None]
    chosen = first(processes) if first else processes
    for process in chosen:
        _signal(process, signal.SIGTERM, group)
    alive = _wait_ended(processes, grace)
    escalated = [p.pid for p in alive]
    if any(p not in chosen for p in alive):
        for process in alive:
            _signal(process, signal.SIGTERM, group)
        alive = _wait_ended(alive, settle)
    for process in alive:
        _signal(process, signal.SIGKILL, group)
    alive = _wait_ended(alive, settle)
    return Stopped(stopped=len(processes), escalated=escalated, survivors=[p.pid for p in alive])


def _wait_ended(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout` s. Like psutil.wait_procs (which reaps our
    own children), except that a process that has ended (see `running`) but is not reaped yet counts as
    ended: one whose parent died waits for PID 1 to reap it, which took over a second on this project's hosts."""
    deadline = time.monotonic() + timeout
    while True:
        _, alive = psutil.wait_procs(processes, timeout=0)
        alive = [p for p in alive if running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def running(process: psutil.Process) -> bool:
    """Whether the process still holds anything. A zombie that is not reaped yet holds no port, core or memory,
    unless only its main thread has exited: a killed Java's main thread can be a zombie while its other
    threads are still exiting, and they keep its sockets listening (seen in CI as a port still taken after
    stop). So a zombie has ended only once it is its last thread."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE or process.num_threads() > 1
    except psutil.Error:
        return False


def _signal(process: psutil.Process, signum: int, group: bool) -> None:
    try:
        if group:
            # is_running() compares the start time: a pid reused since is left alone.
            if process.is_running():
                os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)  # psutil refuses a reused pid itself
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


@contextlib.contextmanager
def ctrl_c_deferred():
    """Hold Ctrl-C (SIGINT) off for the few lines that must not be split -- start a process, record it --
    and deliver it right after, so an interrupted start never leaves an unrecorded process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def end(process: subprocess.Popen, grace: float) -> None:
    """End a child we started and hold: SIGTERM, up to `grace` s, then SIGKILL; reaped either way."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_group(pid: int) -> None:
    """SIGKILL the process group a session leader we started leads (it and all it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def tail(path: Path, lines: int = 40) -> str | None:
    """The last `lines` lines of a log under a header naming the file, or None if it cannot be read."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])
