"""The load generator: httpx's async client, closed or open loop, and a trivial endpoint to calibrate it.

closed  `concurrency` clients; each sends its next request when the last one answered (the
        tutorial's 64 threads). Latency is from the real send: the load adapts to the server.
open    requests scheduled at `rate` per s, whatever the server does -- `arrivals` fixed (every 1/rate s)
        or poisson (exponential gaps, seeded: real traffic's bursts); latency is measured from
        the INTENDED send time, so a request the client could not send on time (no free
        connection, a stalled loop) still counts its wait: queueing cannot hide ("coordinated
        omission"). `concurrency` caps the open connections; a request due while they are all
        busy waits (late), and one due while `max_backlog` already wait (default: no limit) is
        dropped: never sent, counted apart from errors.

Requests sent during `warmup` are sent but not measured. The run lasts `duration` s of measured
load, or until `requests` measured requests have been sent; then the requests in flight are
awaited. Latency percentiles and errors are of the measured requests. Throughput is answers per
second inside the measured window -- the `duration` s after the warm-up (with `requests`: up to the
last answer) -- counting every answer in it: answers to the warm-up's last requests are in (the
window does not start with an empty pipeline), and the drain after it is out (the last partial
batches, which may wait max_batch_delay for batch-mates that never come). A window shorter than one
request's latency holds no answer and would read as 0/s: with `at_least`, it runs on past `duration`
until that many requests have come back in it (at most `timeout` s more), and is that long. Pairs come
from a pool of real pairs, round-robin from a seeded shuffle, never one pair repeated.

Progress: with `on_progress`, a callback (tasks/common/progress.py's StageProgress.load()) gets a
LoadProgress as the load begins, every `progress_every` s after (warm-up included) and a last one, fraction 1.0,
once the load is over; without it, `log` gets a line every `progress_every` s of measured load. The
callback runs on the load's event loop: it must be quick, and an error in it is logged, never raised.

The settings are one Load; who hears how it goes, one Watch. The trivial endpoint the client check measures it
against is tasks/measure/trivial_endpoint.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.common.runlog import Log

DEFAULT_PROGRESS_EVERY = 5.0  # s


class LatencyMs(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float
    max: float = float("nan")
    p95: float = float("nan")  # after the others: older nights' results have none


def percentiles(values, scale: float = 1000.0) -> LatencyMs:
    """p50/p90/p95/p99/mean/max of `values` x `scale` (default: s to ms), numpy's linear interpolation;
    NaN when there is nothing to measure. The one percentile helper: TorchServe's times use it too."""
    ms = np.asarray(values, dtype=float) * scale
    if ms.size == 0:
        nan = float("nan")
        return LatencyMs(p50=nan, p90=nan, p95=nan, p99=nan, mean=nan, max=nan)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return LatencyMs(p50=p50, p90=p90, p95=p95, p99=p99, mean=float(ms.mean()), max=float(ms.max()))


@dataclass
class Sample:
    """One measured request. Times in s from the start of measurement."""

    intended: float  # when it was meant to go (closed loop: when it went)
    sent: float  # when it went
    done: float
    ok: bool
    measured: bool = True  # False: sent during the warm-up
    dropped: bool = False  # open loop: never sent, the backlog waiting for a connection was full

    @property
    def latency(self) -> float:
        """From the intended send time: what a user of an open-loop service waits."""
        return self.done - self.intended

    @property
    def service(self) -> float:
        """From the real send time: all a closed-loop client can see."""
        return self.done - self.sent


@dataclass
class LoadResult:
    mode: str
    concurrency: int
    rate: float | None
    seconds: float
    samples: list[Sample] = field(default_factory=list)  # every request, warm-up included
    first_error: str | None = None
    arrivals: str | None = None  # open loop: "fixed" or "poisson"

    @property
    def measured(self) -> list[Sample]:
        return [s for s in self.samples if s.measured]

    @property
    def warmup_requests(self) -> int:
        return sum(not s.measured for s in self.samples)

    @property
    def ok(self) -> list[Sample]:
        """Measured requests answered 200: their latencies are the percentiles."""
        return [s for s in self.samples if s.measured and s.ok]

    @property
    def errors(self) -> int:
        """Measured requests sent and not answered 200 (dropped ones were never sent)."""
        return sum(s.measured and not s.ok and not s.dropped for s in self.samples)

    @property
    def dropped(self) -> int:
        return sum(s.measured and s.dropped for s in self.samples)

    def late(self, after: float) -> int:
        """Open loop: measured requests sent more than `after` s after their intended time."""
        return sum(s.measured and not s.dropped and s.sent - s.intended > after for s in self.samples)

    def windows(self, step: float) -> list[float]:
        """Answered requests/s in each whole `step` s of the measured window (a last partial one left out)."""
        count = int(self.seconds // step) if step > 0 else 0
        done = np.array([s.done for s in self.samples if s.ok], dtype=float)
        counts, _ = np.histogram(done, bins=np.arange(count + 1) * step) if count else (np.array([]), None)
        return [float(c) / step for c in counts]

    def histogram(self, bins: int = 30) -> tuple[list[float], list[int]]:
        """(bin edges in ms, answered requests per bin) of the measured latencies."""
        ms = np.array([s.latency for s in self.ok], dtype=float) * 1000
        if ms.size == 0:
            return [], []
        low, high = float(ms.min()), float(ms.max())
        counts, edges = np.histogram(ms, bins=bins, range=(low, max(high, low + 1.0)))  # equal latencies: 1 ms wide
        return [float(e) for e in edges], [int(c) for c in counts]

    @property
    def answered(self) -> int:
        """Answers (200) inside the measured window, whenever their request was sent."""
        return sum(s.ok and 0 <= s.done <= self.seconds for s in self.samples)

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def latency(self) -> LatencyMs:
        return percentiles([s.latency for s in self.ok])

    def timeline(self, step: float = 1.0) -> list[dict]:
        """Per `step` s of completions: answered requests/s, p50/p90 ms, errors (for the chart)."""
        window = [s for s in self.samples if s.done >= 0]
        if not window:
            return []
        bins = int(np.ceil(max(s.done for s in window) / step)) or 1
        rows = []
        for index in range(bins):
            inside = [s for s in window if index * step <= s.done < (index + 1) * step]
            good = [s.latency for s in inside if s.ok]
            lat = percentiles(good)
            rows.append(
                {
                    "t": round((index + 1) * step, 3),
                    "requests_per_s": len(good) / step,
                    "p50_ms": lat.p50,
                    "p90_ms": lat.p90,
                    "errors": len(inside) - len(good),
                }
            )
        return rows


class PairPool:
    """Real pairs, shuffled once with a fixed seed, handed out round-robin."""

    def __init__(self, pairs: list[tuple[str, str]], seed: int = 0):
        if not pairs:
            raise ValueError("the pool of pairs is empty")
        self.pairs = list(pairs)
        random.Random(seed).shuffle(self.pairs)
        self.index = 0

    def next(self) -> tuple[str, str]:
        pair = self.pairs[self.index % len(self.pairs)]
        self.index += 1
        return pair


@dataclass(frozen=True)
class LoadProgress:
    """Where a running load stands, for a progress callback."""

    elapsed: float  # s since the load began, warm-up included
    planned: float | None  # warm-up + duration in s; None when the load is a count of requests
    fraction: float  # 0 .. 1, never decreasing; 1.0 only once the load is over
    warming_up: bool
    measured_s: float  # s of measured load so far
    requests_per_s: float  # answers per s of measured load so far
    p50_ms: float  # of the measured answers so far (NaN: none yet)
    p90_ms: float
    errors: int  # measured requests that failed so far
    done: bool = False


class _Tally:
    """A load's running figures for its progress callback. Each sample is looked at once, when it is
    new: a tick costs the requests since the last one, not the whole run's, so a long load's progress
    never takes the event loop from the requests."""

    def __init__(self):
        self.seen = self.answered = self.errors = 0
        self.latencies: list[float] = []  # s, of the measured answers

    def add(self, samples: list[Sample]) -> None:
        for sample in samples[self.seen :]:  # samples only grows
            self.answered += sample.ok and sample.done >= 0  # an answer in the measured window
            if sample.measured and sample.ok:
                self.latencies.append(sample.latency)
            elif sample.measured and not sample.dropped:
                self.errors += 1
        self.seen = len(samples)


def _snapshot(
    tally: _Tally,
    elapsed: float,
    warmup: float,
    duration: float,
    requests: int | None,
    counted: int,
    last: float,
    done: bool = False,
) -> LoadProgress:
    measured_s = max(0.0, elapsed - warmup)
    if done:
        fraction = 1.0
    elif requests is not None:
        fraction = min(counted / requests, 0.99)
    else:
        fraction = min(elapsed / (warmup + duration), 0.99) if warmup + duration > 0 else 0.99
    p50, p90 = (
        (float(v) * 1000 for v in np.percentile(tally.latencies, [50, 90])) if tally.latencies else (float("nan"),) * 2
    )
    return LoadProgress(
        elapsed=elapsed,
        planned=None if requests is not None else warmup + duration,
        fraction=max(fraction, last),
        warming_up=elapsed < warmup,
        measured_s=measured_s,
        requests_per_s=tally.answered / measured_s if measured_s > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        errors=tally.errors,
        done=done,
    )


def _progress_line(samples: list[Sample], now: float, window: float) -> str:
    window = min(window, now)
    recent = [s for s in samples if now - window < s.done <= now]
    good_recent = [s.latency for s in recent if s.ok]
    lat = percentiles(good_recent)
    overall = sum(s.ok and 0 <= s.done <= now for s in samples) / now if now > 0 else 0.0
    errors = sum(s.measured and not s.ok for s in samples)
    return (
        f"{now:5.0f} s: {len(good_recent) / window:.1f} requests/s over the last {window:.3g} s "
        f"(p50 {lat.p50:.0f} ms, p90 {lat.p90:.0f} ms); overall {overall:.1f} requests/s, errors {errors}"
    )


def arrival_times(rate: float, arrivals: str = "fixed", seed: int = 0) -> Iterator[float]:
    """Open loop: the intended send times, in s from the start. fixed: every 1/rate s. poisson: exponential
    gaps of mean 1/rate (the bursts real traffic has, as MLPerf's Server scenario sends), from a seeded
    generator, so a night's schedule is the same as the last one's."""
    if arrivals == "fixed":
        yield from (index / rate for index in itertools.count())
        return
    generator, now = random.Random(seed), 0.0
    while True:
        yield now
        now += generator.expovariate(rate)


class Load(BaseModel):
    """One load's settings: what it sends, how fast and for how long (the module's docstring says how each is
    measured)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["closed", "open"] = "closed"
    concurrency: int = Field(64, ge=1)  # closed: the clients; open: the connections, at most
    duration: float = Field(30.0, ge=0)  # s of measured load (ignored with `requests`)
    requests: int | None = Field(None, ge=1)  # measure this many requests instead of `duration` s
    # closed loop, duration: the window runs on until this many requests came back in it (an open loop's window is
    # its schedule's: what it offers in `duration` s)
    at_least: int = Field(0, ge=0)
    rate: float | None = Field(None, gt=0)  # open loop: requests/s
    arrivals: Literal["fixed", "poisson"] = "fixed"  # open loop
    seed: int = 0  # the Poisson arrivals': the same schedule every night
    warmup: float = Field(0.0, ge=0)  # s sent, not measured
    timeout: float = Field(120.0, gt=0)  # s one request may take
    max_backlog: int | None = Field(None, ge=0)  # open loop: requests waiting for a connection before one is dropped

    @model_validator(mode="after")
    def _open_needs_a_rate(self) -> Load:
        if self.mode == "open" and self.rate is None:
            raise ValueError("open loop needs a rate > 0 (requests/s)")
        return self


@dataclass(frozen=True)
class Watch:
    """Who hears how a load goes: `on_progress` a LoadProgress every `progress_every` s (warm-up included) and a
    last one once it is over; without it, `log` a line every `progress_every` s of measured load. None: silent."""

    progress_every: float | None = DEFAULT_PROGRESS_EVERY
    log: Log | None = None
    label: str = "benchmark"
    on_progress: Callable[[LoadProgress], None] | None = None
    # Called once as the warm-up ends, in the load's own time, in a thread of its own (the clients never wait on
    # it): where a server's own account of the measured window begins (tasks/measure/benchmark.py WindowMark).
    on_measuring: Callable[[], None] | None = None


QUIET = Watch(progress_every=None)


class LoadGenerator:
    """One load: its settings, and the state its clients share while it runs (run() once)."""

    def __init__(self, url: str, headers: dict | None, pairs: list[tuple[str, str]], load: Load, watch: Watch = QUIET):
        self.url, self.headers, self.pool = url, headers or {}, PairPool(pairs)
        self.load, self.watch = load, watch
        self.log = watch.log or logging.getLogger(__name__)
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.start = self.measure_from = self.stop_at = 0.0  # set once the clients are ready
        self.counted = 0  # measured requests sent so far
        self.waiting = 0  # open loop: requests due but waiting for a free connection
        self.last = 0.0  # the last fraction told: never goes back
        self.callback_failed = False
        self.tally = _Tally()
        self.back = 0  # requests come back (answered or not) since measure_from
        self.enough_at: float | None = None  # when `at_least` had come back (the window may end from then on)

    async def run(self) -> LoadResult:
        """Drive the url with form-encoded pairs (seq_0, seq_1) and measure every answer."""
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client) for client in self._clients()]
            self.start = time.monotonic()
            self.measure_from = self.start + self.load.warmup
            self.stop_at = self.measure_from + self.load.duration  # unused with `requests`
            self.enough_at = self.start if self.load.at_least == 0 or self.load.mode == "open" else None
            reporter = asyncio.create_task(self._progress()) if self.watch.progress_every else None
            measuring = asyncio.create_task(self._measuring()) if self.watch.on_measuring else None
            try:
                if self.load.mode == "closed":
                    await asyncio.gather(*(self._closed_client(client) for client in clients))
                else:
                    await self._open_schedule(clients)
            finally:
                if reporter is not None:
                    reporter.cancel()
            if measuring is not None:  # ended before its warm-up did: no call; else the call's own end
                await measuring
        end = time.monotonic()
        if self.watch.on_progress is not None:
            self._tell(done=True)
        if self.load.requests is not None:
            seconds = end - self.measure_from
        else:  # `duration`, or longer where `at_least` requests came back only later
            closed = self.stop_at + self.load.timeout if self.enough_at is None else self.enough_at
            seconds = max(self.load.duration, closed - self.measure_from)
        return LoadResult(
            mode=self.load.mode,
            concurrency=self.load.concurrency,
            rate=self.load.rate if self.load.mode == "open" else None,
            seconds=max(seconds, 0.0),
            samples=self.samples,
            first_error=self.errors[0] if self.errors else None,
            arrivals=self.load.arrivals if self.load.mode == "open" else None,
        )

    def _clients(self) -> list[httpx.AsyncClient]:
        # One client with one connection per virtual user: httpcore's shared pool spends O(connections)
        # per request finding a free one, which at 64 connections makes the client, not the server, the limit.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(self.load.timeout, pool=None)
        tls = ssl.create_default_context()  # one context for all clients (http:// never uses it)
        return [
            httpx.AsyncClient(headers=self.headers, timeout=timeout, limits=limits, verify=tls)
            for _ in range(self.load.concurrency)
        ]

    def _claim(self, now: float) -> bool | None:
        """Whether a request sent at `now` is measured; None: no more requests."""
        if now < self.measure_from:
            return False
        if self.load.requests is not None:
            if self.counted >= self.load.requests:
                return None
        elif now >= self.stop_at and (self.enough_at is not None or now >= self.stop_at + self.load.timeout):
            return None
        self.counted += 1
        return True

    async def _one(self, client: httpx.AsyncClient, intended: float | None, measured: bool) -> None:
        seq_0, seq_1 = self.pool.next()
        sent = time.monotonic()
        intended = sent if intended is None else intended  # closed loop: sent when meant to
        try:
            answer = await client.post(self.url, data={"seq_0": seq_0, "seq_1": seq_1})
            ok = answer.status_code == 200
            if not ok and not self.errors:
                self.errors.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
        except httpx.HTTPError as error:
            ok = False
            if not self.errors:
                self.errors.append(f"{type(error).__name__}: {error}")
        origin, back = self.measure_from, time.monotonic()
        self.samples.append(Sample(intended - origin, sent - origin, back - origin, ok, measured))
        if back >= origin:
            self.back += 1
            if self.enough_at is None and self.back >= self.load.at_least:
                self.enough_at = back

    async def _closed_client(self, client: httpx.AsyncClient) -> None:
        while (measured := self._claim(time.monotonic())) is not None:
            await self._one(client, None, measured)

    async def _open_schedule(self, clients: list[httpx.AsyncClient]) -> None:
        free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in clients:
            free.put_nowait(client)
        in_flight: set[asyncio.Task] = set()
        assert self.load.rate is not None  # Load refuses an open loop without one
        for offset in arrival_times(self.load.rate, self.load.arrivals, self.load.seed):
            intended = self.start + offset
            measured = self._claim(intended)
            if measured is None:
                break
            delay = intended - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._send(free, intended, measured))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    async def _send(self, free: asyncio.Queue[httpx.AsyncClient], intended: float, measured: bool) -> None:
        backlog = self.load.max_backlog
        if backlog is not None and free.empty() and self.waiting >= backlog:  # full: dropped
            now = time.monotonic() - self.measure_from
            self.samples.append(Sample(intended - self.measure_from, now, now, False, measured, dropped=True))
            return
        self.waiting += 1
        try:
            client = await free.get()  # all connections busy: the wait counts, from `intended`
        finally:
            self.waiting -= 1
        try:
            await self._one(client, intended, measured)
        finally:
            free.put_nowait(client)

    async def _measuring(self) -> None:
        await asyncio.sleep(max(0.0, self.measure_from - time.monotonic()))
        assert self.watch.on_measuring is not None
        await asyncio.to_thread(self.watch.on_measuring)

    def _tell(self, done: bool = False) -> None:
        assert self.watch.on_progress is not None
        self.tally.add(self.samples)
        snapshot = _snapshot(
            self.tally,
            time.monotonic() - self.start,
            self.load.warmup,
            self.load.duration,
            self.load.requests,
            self.counted,
            self.last,
            done,
        )
        self.last = snapshot.fraction
        try:
            self.watch.on_progress(snapshot)
        except Exception as error:  # progress is for people: it never fails the measurement
            if not self.callback_failed:
                self.log.warning(
                    "%s: the progress callback failed (%s: %s); the load goes on",
                    self.watch.label,
                    type(error).__name__,
                    error,
                )
            self.callback_failed = True

    async def _progress(self) -> None:
        """The callback every progress_every s from the start; without one, a log line every progress_every s
        of measured load."""
        every = self.watch.progress_every or DEFAULT_PROGRESS_EVERY
        if self.watch.on_progress is not None:
            self._tell()  # the clients are ready: the load has begun
            tick = self.start
            while True:
                tick += every
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                self._tell()
        tick = self.measure_from
        while True:
            tick += every
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            self.log.info("%s %s", self.watch.label, _progress_line(self.samples, tick - self.measure_from, every))


async def run_load(
    url: str, headers: dict | None, pairs: list[tuple[str, str]], load: Load, watch: Watch = QUIET
) -> LoadResult:
    """One load from async code."""
    return await LoadGenerator(url, headers, pairs, load, watch).run()


def load(
    url: str, headers: dict | None, pairs: list[tuple[str, str]], settings: Load, watch: Watch = QUIET
) -> LoadResult:
    """run_load from synchronous code (a Prefect task, a test)."""
    return asyncio.run(run_load(url, headers, pairs, settings, watch))
