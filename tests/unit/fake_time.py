"""Time that passes only when a test (or the code under test) says so: unit tests never wait on a real clock.

FakeClock      monotonic() / sleep() for code on the test's thread, and wait(event, seconds) for the
               background threads of the code under test (tasks/common/progress.py's live line and artifact,
               telemetry's sampler): a sleep moves the clock at once, and every thread whose wait ends on the
               way runs its turn before the clock goes on, so what a thread does at t = 1 s happens in order.
TimeOn         a module's `time` on a FakeClock (monkeypatch.setattr(module, "time", TimeOn(clock))).
VirtualTimeLoop an asyncio event loop on a FakeClock: when nothing is ready to run, it jumps to its next timer
               instead of waiting for it. The load generator (tasks/measure/loadgen.py) runs on it against a
               FakeEndpoint, an in-loop stand-in for its TrivialEndpoint, so a "1 s" load runs as fast as the
               CPU allows and its figures are exact.
EndingProcesses tasks/common/processes.py's waits for real processes to end, on a FakeClock: a grace period
               passes at once, and a process that a signal will end is waited for by its exit (an event).
"""

from __future__ import annotations

import asyncio
import os
import select
import selectors
import signal
import threading
import time as real_time
from pathlib import Path

import httpx
import psutil

SETTLE_S = 10.0  # how long a background thread may take to come back to its wait (a safety net, never waited)


class FakeClock:
    """A monotonic clock at `start` s that moves only through sleep() / advance()."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self.sleeps: list[float] = []  # every sleep() asked for, in order
        self._cond = threading.Condition()
        self._waiting: dict[threading.Thread, float] = {}  # threads in wait(): their deadlines
        self._woken: set[threading.Thread] = set()  # threads whose wait ended, until they wait again or end

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """The caller's sleep: recorded, and the clock moves on at once (never from a background thread)."""
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on. A background thread whose wait ends on the way runs its turn (until it
        waits again or ends) at its own deadline, before the clock moves further."""
        target = self.now + max(0.0, seconds)
        with self._cond:
            while True:
                due = [deadline for deadline in self._waiting.values() if deadline <= target]
                if not due:
                    break
                self.now = max(self.now, min(due))
                self._woken.update(thread for thread, deadline in self._waiting.items() if deadline <= self.now)
                self._cond.notify_all()
                self._settle()
            self.now = target

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """event.wait(seconds), with the seconds on this clock: True as soon as the event is set, False once the
        clock has passed the deadline."""
        me = threading.current_thread()
        self._watch(event)
        with self._cond:
            deadline = self.now + seconds
            self._waiting[me] = deadline
            self._cond.notify_all()
            while not event.is_set() and self.now < deadline:
                self._cond.wait()
            del self._waiting[me]
            return event.is_set()

    def until_waiting(self, threads: int) -> None:
        """Block until `threads` background threads are in wait() (they have started and done their first turn)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._waiting) >= threads, SETTLE_S):
                raise AssertionError(f"{len(self._waiting)} thread(s) waiting on the fake clock, not {threads}")

    def _settle(self) -> None:
        """(holding the lock) Until every woken thread is waiting again or has ended."""
        give_up = real_time.monotonic() + SETTLE_S
        while True:
            self._woken = {
                thread
                for thread in self._woken
                if thread.is_alive() and self._waiting.get(thread, self.now) <= self.now
            }
            if not self._woken:
                return
            if real_time.monotonic() > give_up:
                raise AssertionError(
                    f"{sorted(t.name for t in self._woken)} did not come back to wait on the "
                    f"fake clock within {SETTLE_S} s"
                )
            # Woken by a thread that waits again; the timeout only notices a thread that ended instead.
            self._cond.wait(0.01)

    def _watch(self, event: threading.Event) -> None:
        """Make event.set() wake the threads waiting on this clock."""
        if getattr(event, "_fake_clock", None) is self:
            return
        original = event.set

        def set_and_wake() -> None:
            original()
            with self._cond:
                self._cond.notify_all()

        event.set, event._fake_clock = set_and_wake, self


class TimeOn:
    """The `time` module with its clocks and sleep on a FakeClock; anything else (strftime ...) is the real one's."""

    def __init__(self, clock: FakeClock):
        self.monotonic = self.perf_counter = self.time = clock.monotonic
        self.sleep = clock.sleep

    def __getattr__(self, name):
        return getattr(real_time, name)


class _IdleSelector(selectors.DefaultSelector):
    """A selector that, when no I/O is ready and the loop would wait for a timer, moves the clock to it."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.clock = clock

    def select(self, timeout=None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer: only another thread or real I/O can wake the loop
            ready = super().select(SETTLE_S)
            if not ready:
                raise AssertionError("the virtual-time event loop has nothing left to run: a deadlock")
            return ready
        self.clock.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is a FakeClock's; idle, it jumps to its next timer instead of sleeping."""

    virtual_time = True  # tests/unit/conftest.py: asyncio.sleep on this loop is no real sleep

    def __init__(self, clock: FakeClock):
        super().__init__(selector=_IdleSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.monotonic()


def run_virtual(clock: FakeClock, main):
    """asyncio.run(main) on a VirtualTimeLoop."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


class FakeEndpoint(httpx.AsyncBaseTransport):
    """trivial_endpoint.TrivialEndpoint's behaviour inside the load's own event loop: every POST answered `status`
    ["paraphrase"] after `delay` s (of the loop's clock), one request at a time when `serial` (requests queue in
    arrival order, as on the real one's lock). Use as trivial_endpoint.TrivialEndpoint is: `with ... as e: load(e.url)`.
    The delay must be > 0 for a load of a duration: with answers in no time, the clock would never move."""

    BODY = b'["paraphrase"]'
    _made = 0

    def __init__(self, delay: float = 0.01, serial: bool = False, status: int = 200, record: bool = False):
        FakeEndpoint._made += 1
        self.delay, self.serial, self.status, self.record = delay, serial, status, record
        self.url = f"http://fake-endpoint-{FakeEndpoint._made}/predictions/trivial"
        self.served = 0
        self.bodies: list[bytes] = []
        self.headers: list[httpx.Headers] = []
        self._lock: asyncio.Lock | None = None

    def __enter__(self) -> FakeEndpoint:
        _ENDPOINTS[httpx.URL(self.url).host] = self
        return self

    def __exit__(self, *exc) -> None:
        _ENDPOINTS.pop(httpx.URL(self.url).host, None)

    async def answer(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if self.record:
            self.bodies.append(body)
            self.headers.append(request.headers)
        if self.serial:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                await asyncio.sleep(self.delay)
        elif self.delay:
            await asyncio.sleep(self.delay)
        self.served += 1
        return httpx.Response(self.status, content=self.BODY, headers={"Content-Type": "application/json"})


_ENDPOINTS: dict[str, FakeEndpoint] = {}  # host -> the FakeEndpoint entered under it


class _ToFakeEndpoints(httpx.AsyncBaseTransport):
    """A client's transport: requests go to the FakeEndpoint of their host; none there is a refused connection."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = _ENDPOINTS.get(request.url.host)
        if endpoint is None:
            raise httpx.ConnectError(f"no fake endpoint at {request.url.host}", request=request)
        return await endpoint.answer(request)


class _HttpxToFakeEndpoints:
    """The httpx module, but its AsyncClient talks to the FakeEndpoints."""

    def AsyncClient(self, *args, **kwargs):
        return httpx.AsyncClient(*args, **{**kwargs, "transport": _ToFakeEndpoints()})

    def __getattr__(self, name):
        return getattr(httpx, name)


class _AsyncioOn:
    """The asyncio module, but asyncio.run runs on a VirtualTimeLoop of `clock`."""

    def __init__(self, clock: FakeClock):
        self.run = lambda main: run_virtual(clock, main)

    def __getattr__(self, name):
        return getattr(asyncio, name)


def load_in_virtual_time(monkeypatch, clock: FakeClock) -> None:
    """tasks.measure.loadgen on `clock`: loads run on a VirtualTimeLoop against FakeEndpoints, which stand in
    for its TrivialEndpoint (trivial_endpoint.TrivialEndpoint is one, for the code that starts its own)."""
    from tasks.measure import loadgen, trivial_endpoint

    monkeypatch.setattr(loadgen, "time", TimeOn(clock))
    monkeypatch.setattr(loadgen, "asyncio", _AsyncioOn(clock))
    monkeypatch.setattr(loadgen, "httpx", _HttpxToFakeEndpoints())
    monkeypatch.setattr(trivial_endpoint, "TrivialEndpoint", FakeEndpoint)


def progress_on(monkeypatch, clock: FakeClock) -> None:
    """tasks.common.progress on `clock`: its times, and its threads' waits between updates."""
    from tasks.common import progress

    monkeypatch.setattr(progress, "time", TimeOn(clock))
    monkeypatch.setattr(progress, "_wait", clock.wait)


def ended(pid: int, within: float = SETTLE_S) -> None:
    """Block until process `pid` has ended (exited, a zombie or gone): its pidfd becomes readable, no polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], within)[0]:
            raise AssertionError(f"process {pid} has not ended within {within} s")
    finally:
        os.close(fd)


def _will_end(pid: int, signum: int) -> bool:
    """Whether `signum` ends process `pid`: SIGKILL always; another signal unless the process ignores it (its
    default action ends it, and the tests' children that catch SIGTERM end in their handler, as TorchServe's do)."""
    if signum == signal.SIGKILL:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigIgn:"))
    return not ignored & (1 << (signum - 1))


class EndingProcesses:
    """tasks/common/processes.py on a FakeClock, for stops of real processes (install() it).

    Every signal this process sends (os.kill / os.killpg) is in `sent` as (pid, signal) -- a group's signal as
    (-pgid, signal) -- and each process it will end is noted. processes.py's poll sleep moves the clock, then
    waits for every noted process to have ended. So a grace period a process ignores passes at once, and a
    process on its way out is seen ended at the next look: what the stop decides is what it decides on a real
    clock, with no time waited."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.sent: list[tuple[int, int]] = []
        self._ending: set[int] = set()

    def install(self, monkeypatch) -> EndingProcesses:
        from tasks.common import processes

        kill, killpg = os.kill, os.killpg

        def recorded_kill(pid: int, signum: int) -> None:
            self._send(pid, signum, [pid])
            kill(pid, signum)

        def recorded_killpg(pgid: int, signum: int) -> None:
            self._send(-pgid, signum, [p.pid for p in psutil.process_iter() if _in_group(p.pid, pgid)])
            killpg(pgid, signum)

        monkeypatch.setattr(os, "kill", recorded_kill)
        monkeypatch.setattr(os, "killpg", recorded_killpg)
        on_clock = TimeOn(self.clock)
        on_clock.sleep = self.sleep
        monkeypatch.setattr(processes, "time", on_clock)
        return self

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)
        for pid in sorted(self._ending):
            ended(pid)
        self._ending.clear()

    def _send(self, target: int, signum: int, pids: list[int]) -> None:
        if signum == 0:  # psutil asking whether a pid exists
            return
        self.sent.append((target, signum))
        self._ending.update(pid for pid in pids if pid != os.getpid() and _will_end(pid, signum))


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except OSError:
        return False
