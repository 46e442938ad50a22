"""How a night is stopped from outside -- Ctrl-C, SIGTERM, a cancel from the UI -- seen once, as it arrives.

Python runs a signal's handler in the main thread at the next bytecode, and where that lands decides which
exception surfaces, where: a Ctrl-C while Prefect sets up a task run surfaced as `ValueError: Task run is not
set` (its task engine failing to record the crash of a run it had not created yet); a SIGTERM inside the load
generator's event loop was swallowed as asyncio's "Fatal write error on socket transport", and the run went on
measuring. So the exception is only the vehicle that unwinds the flow through Prefect's engine; the record of
the interruption is the signal itself. The interpreter writes each signal's number to a wakeup fd the moment
the signal arrives, before any handler runs (signal.set_wakeup_fd), and a thread of ours reads it -- whatever
handler is installed (Prefect's SIGTERM bridge stays: it is how a worker's cancel ends Cancelled) and wherever
the main thread is.

    WATCH.install(dedicated=True)   # the command line, or a worker's process for the flow run
    WATCH.attach(run)               # flows/run.py: the stage running when a signal came, the stop, the summary
    WATCH.first                     # the first interruption (signal, when, during which stage), or None

After the first signal the watch is also the night's backstop, each step only if the main thread has not done
it yet (it normally has, well before):
  - every 3 s until the run has begun its exit: the signal again (a swallowed exception does not end a night);
  - at 6 s: the night's server stopped from here (a stop takes <= 12 s for TorchServe, <= 14 s for Ray Serve, so
    it is gone within 20 s of the signal);
  - at 19 s: the summary written from what the run knows;
  - at 27 s, in a process of its own for the night: the run's Prefect state set and the process ended, before
    a Prefect worker's SIGKILL 30 s after its SIGTERM.
A second Ctrl-C or SIGTERM kills the server at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Deadlines:
    """When the backstop steps in, in s after the first signal (the module's docstring says why these)."""

    redeliver_every: float = 3.0
    stop_after: float = 6.0
    summary_after: float = 19.0
    exit_after: float = 27.0


log = logging.getLogger("bert-validation.interrupts")


def said(signum: int) -> str:
    """A signal in words, as the summary and the console say it."""
    if signum == signal.SIGINT:
        return "Ctrl-C (SIGINT)"
    return f"{signal.Signals(signum).name} (a cancellation or a stopped job)"


@dataclass(frozen=True)
class Arrival:
    """One interrupting signal: which, when (monotonic and wall clock), and where the night was."""

    signum: int
    at: float
    wall: float
    stage: str | None  # the stage running when it came; None between stages or before the first
    after: str | None  # the last stage that had ended, when none was running

    @property
    def by(self) -> str:
        return said(self.signum)

    @property
    def during(self) -> str:
        """Where the night was, in words: "during benchmark", "between benchmark and the next stage"."""
        if self.stage:
            return f"during {self.stage}"
        if self.after:
            return f"after {self.after}, before the next stage began"
        return "before the first stage began"

    def vehicle(self) -> BaseException:
        """The exception that unwinds a run through Prefect's engine for this signal: KeyboardInterrupt for
        Ctrl-C (Crashed), Prefect's TerminationSignal for SIGTERM (Cancelled when its worker asked, else
        Crashed) -- what Prefect's own handlers raise."""
        if self.signum == signal.SIGINT:
            return KeyboardInterrupt()
        from prefect.exceptions import TerminationSignal

        return TerminationSignal(signal=self.signum)


class Night(Protocol):
    """What the watch needs of the run it backs up (flows/run.py's Run)."""

    dir: Path  # the run directory
    exiting: bool  # the main thread has begun the run's exit: stop, summary, artifacts

    def running_stage(self) -> tuple[str | None, str | None]: ...  # (running, last ended)

    def stop_now(self, grace: float) -> None: ...  # stop the night's servers from any thread; idempotent

    def write_summary_now(self) -> None: ...  # summary.json from any thread, if not yet written

    def end_state_now(self, arrival: Arrival) -> None: ...  # the flow run's final Prefect state, if not set


class Watch:
    """The process's one record of interruptions, and the backstop of the run attached to it."""

    def __init__(self, deadlines: Deadlines | None = None) -> None:
        self.deadlines = deadlines or Deadlines()
        self.arrivals: list[Arrival] = []
        self.dedicated = False  # this process exists for the night: the watch may end it
        self.night: Night | None = None
        self.shielding = 0  # depth of shielded blocks the main thread is in
        self.run_dir: Path | None = None  # the last night attached: where its summary is
        self._installed = False
        self._self_sent: Counter[int] = Counter()
        self._done: set[str] = set()  # backstop steps taken (or found done) for the first arrival
        self._redelivered_at = 0.0
        self._lock = threading.Lock()
        self._read_lock = threading.RLock()  # the watch's thread and the main thread (sync) both read

    @property
    def first(self) -> Arrival | None:
        return self.arrivals[0] if self.arrivals else None

    @property
    def repeated(self) -> bool:
        """A second Ctrl-C or SIGTERM came: stop with no grace."""
        return len(self.arrivals) > 1

    def install(self, dedicated: bool = False) -> Watch:
        """Start watching (main thread only; again is harmless). `dedicated`: the process runs this night and
        nothing else (the command line; a worker's flow-run process), so the exit backstop may end it."""
        self.dedicated = self.dedicated or dedicated
        if self._installed or threading.current_thread() is not threading.main_thread():
            return self
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's (an event loop's signal handlers): leave it, watch nothing
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()
            log.debug("the signal wakeup fd is taken (%d): interruptions are not watched", previous)
            return self
        # Python writes the wakeup byte only for a signal with a Python handler: SIGINT has one from start-up;
        # SIGTERM gets Prefect's bridge inside a flow run, and the command line's own before it (flows/cli.py).
        self._sockets = (reader, writer)  # kept open for the process's life
        self._installed = True
        threading.Thread(target=self._watch, args=(reader,), name="interrupts", daemon=True).start()
        return self

    def attach(self, night: Night) -> None:
        """The run the backstop stops, writes and ends, from its start to the end of its exit."""
        self.night, self.run_dir = night, night.dir

    def detach(self, night: Night) -> None:
        if self.night is night:
            self.night = None

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Inside, Ctrl-C and SIGTERM are recorded (a second one kills the server from the watch) but raise
        nothing: a run's exit -- stop, summary, artifacts -- is not cut short. Their Python handlers are
        swapped for the block's duration (main thread only) and put back after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, _recorded_only)
        self.shielding += 1
        try:
            yield
        finally:
            self.shielding -= 1
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    # -- the thread ------------------------------------------------------------------------------------

    def sync(self) -> Arrival | None:
        """The first interruption, counting a signal that has arrived but that the watch's thread has not read
        yet. The main thread asks as an exception ends a stage: the interpreter wrote the signal's byte before
        running the handler that raised, so the byte is there to read even when the thread has had no turn."""
        if self._installed:
            self._read_pending()
        return self.first

    def _read_pending(self) -> None:
        with self._read_lock:
            while True:
                try:
                    received = self._sockets[0].recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                for signum in received:
                    self._arrived(signum)

    def _watch(self, reader: socket.socket) -> None:
        while True:
            # Never an endless wait: the main thread may read a signal first (sync), and the backstop still
            # needs its turn after it.
            select.select([reader], [], [], self.deadlines.redeliver_every / 3)
            self._read_pending()
            if self.first:
                self._backstop(self.first)

    def _arrived(self, signum: int) -> None:
        if signum not in SIGNALS:
            return
        if self._self_sent[signum]:  # our own delivery again (_backstop), not a new signal
            self._self_sent[signum] -= 1
            return
        night = self.night
        stage, after = night.running_stage() if night else (None, None)
        arrival = Arrival(signum=signum, at=time.monotonic(), wall=time.time(), stage=stage, after=after)
        self.arrivals.append(arrival)
        if len(self.arrivals) == 1 and night is not None and night.exiting:
            log.warning("interrupted by %s as the run ends: its stop and summary finish first", arrival.by)
        elif len(self.arrivals) == 1:
            log.warning("interrupted by %s %s", arrival.by, arrival.during)
        elif night is not None:
            log.warning("interrupted again by %s: killing the server now", arrival.by)
            self._act("kill", lambda: night.stop_now(grace=0.0))

    def _backstop(self, first: Arrival) -> None:
        """The steps the main thread should have taken by now (module docstring), each at most once."""
        night, waited, due = self.night, time.monotonic() - first.at, self.deadlines
        if night is not None and not night.exiting and waited >= self._redelivered_at + due.redeliver_every:
            self._redelivered_at = waited
            self._self_sent[first.signum] += 1
            signal.pthread_kill(threading.main_thread().ident or 0, first.signum)
        if night is not None and waited >= due.stop_after:
            self._once("stop", lambda: night.stop_now(grace=2.0))
        if night is not None and waited >= due.summary_after:
            self._once("summary", night.write_summary_now)
        if self.dedicated and waited >= due.exit_after:
            self._once("exit", lambda: self._end(first, night))

    def _once(self, step: str, action: Callable[[], None]) -> None:
        with self._lock:
            if step in self._done:
                return
            self._done.add(step)
        self._act(step, action)

    def _act(self, step: str, action: Callable[[], None]) -> None:
        """Run a backstop step in a thread of its own: the watch keeps reading signals meanwhile."""

        def guarded() -> None:
            try:
                action()
            except Exception:  # a backstop that fails must not end the watch; say what it was
                log.exception("interrupt backstop step %r failed", step)

        threading.Thread(target=guarded, name=f"interrupts-{step}", daemon=True).start()

    def _end(self, first: Arrival, night: Night | None) -> None:
        """The night's process outlived its signal by the exit deadline: record its end and leave."""
        print(
            f"interrupted by {first.by}: the run did not end within {self.deadlines.exit_after:g} s of the signal; "
            "ending it",
            file=sys.stderr,
            flush=True,
        )
        if night is not None:
            night.stop_now(grace=0.0)
            night.write_summary_now()
            night.end_state_now(first)
        sys.stdout.flush()
        os._exit(128 + first.signum)


def _recorded_only(signum: int, frame: object) -> None:
    """A shielded block's handler: the wakeup fd has recorded the signal; nothing to raise."""


WATCH = Watch()
