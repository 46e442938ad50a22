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
batches, which may wait max_batch_delay for batch-mates that never come). Pairs come from a pool of real
pairs, round-robin from a seeded shuffle, never one pair repeated.

Progress: with `on_progress`, a callback (tasks/common/progress.py's StageProgress.load()) gets a
LoadProgress as the load begins, every `progress_every` s after (warm-up included) and a last one, fraction 1.0,
once the load is over; without it, `log` gets a line every `progress_every` s of measured load. The
callback runs on the load's event loop: it must be quick, and an error in it is logged, never raised.

TrivialEndpoint answers ["paraphrase"] to any POST from a thread of its own: the same load
generator against it shows what the client alone can sustain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
from pydantic import BaseModel

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


ARRIVALS = ("fixed", "poisson")


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


class LoadGenerator:
    """One load: its settings, and the state its clients share while it runs (run() once)."""

    def __init__(
        self,
        url: str,
        headers: dict | None,
        pairs: list[tuple[str, str]],
        *,
        mode: str = "closed",
        concurrency: int = 64,
        duration: float = 30.0,
        requests: int | None = None,
        rate: float | None = None,
        arrivals: str = "fixed",
        seed: int = 0,
        warmup: float = 0.0,
        progress_every: float | None = DEFAULT_PROGRESS_EVERY,
        log: Log | None = None,
        label: str = "benchmark",
        timeout: float = 120.0,
        max_backlog: int | None = None,
        on_progress: Callable[[LoadProgress], None] | None = None,
    ):
        if mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', not {mode!r}")
        if mode == "open" and not (rate and rate > 0):
            raise ValueError("open loop needs a rate > 0 (requests/s)")
        if arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {ARRIVALS}, not {arrivals!r}")
        self.url, self.headers, self.pool = url, headers or {}, PairPool(pairs)
        self.mode, self.concurrency, self.duration, self.requests = mode, concurrency, duration, requests
        self.rate, self.arrivals, self.seed, self.warmup = rate, arrivals, seed, warmup
        self.progress_every, self.log, self.label = progress_every, log or logging.getLogger(__name__), label
        self.timeout, self.max_backlog, self.on_progress = timeout, max_backlog, on_progress
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.start = self.measure_from = self.stop_at = 0.0  # set once the clients are ready
        self.counted = 0  # measured requests sent so far
        self.waiting = 0  # open loop: requests due but waiting for a free connection
        self.last = 0.0  # the last fraction told: never goes back
        self.callback_failed = False
        self.tally = _Tally()

    async def run(self) -> LoadResult:
        """Drive the url with form-encoded pairs (seq_0, seq_1) and measure every answer."""
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client) for client in self._clients()]
            self.start = time.monotonic()
            self.measure_from = self.start + self.warmup
            self.stop_at = self.measure_from + self.duration  # unused with `requests`
            reporter = asyncio.create_task(self._progress()) if self.progress_every else None
            try:
                if self.mode == "closed":
                    await asyncio.gather(*(self._closed_client(client) for client in clients))
                else:
                    await self._open_schedule(clients)
            finally:
                if reporter is not None:
                    reporter.cancel()
        end = time.monotonic()
        if self.on_progress is not None:
            self._tell(done=True)
        seconds = (end - self.measure_from) if self.requests is not None else self.duration
        return LoadResult(
            mode=self.mode,
            concurrency=self.concurrency,
            rate=self.rate if self.mode == "open" else None,
            seconds=max(seconds, 0.0),
            samples=self.samples,
            first_error=self.errors[0] if self.errors else None,
            arrivals=self.arrivals if self.mode == "open" else None,
        )

    def _clients(self) -> list[httpx.AsyncClient]:
        # One client with one connection per virtual user: httpcore's shared pool spends O(connections)
        # per request finding a free one, which at 64 connections makes the client, not the server, the limit.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(self.timeout, pool=None)
        tls = ssl.create_default_context()  # one context for all clients (http:// never uses it)
        return [
            httpx.AsyncClient(headers=self.headers, timeout=timeout, limits=limits, verify=tls)
            for _ in range(self.concurrency)
        ]

    def _claim(self, now: float) -> bool | None:
        """Whether a request sent at `now` is measured; None: no more requests."""
        if now < self.measure_from:
            return False
        if self.requests is not None:
            if self.counted >= self.requests:
                return None
        elif now >= self.stop_at:
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
        origin = self.measure_from
        self.samples.append(Sample(intended - origin, sent - origin, time.monotonic() - origin, ok, measured))

    async def _closed_client(self, client: httpx.AsyncClient) -> None:
        while (measured := self._claim(time.monotonic())) is not None:
            await self._one(client, None, measured)

    async def _open_schedule(self, clients: list[httpx.AsyncClient]) -> None:
        free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in clients:
            free.put_nowait(client)
        in_flight: set[asyncio.Task] = set()
        assert self.rate is not None  # checked in __init__
        for offset in arrival_times(self.rate, self.arrivals, self.seed):
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
        if self.max_backlog is not None and free.empty() and self.waiting >= self.max_backlog:  # full: dropped
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

    def _tell(self, done: bool = False) -> None:
        assert self.on_progress is not None
        self.tally.add(self.samples)
        snapshot = _snapshot(
            self.tally,
            time.monotonic() - self.start,
            self.warmup,
            self.duration,
            self.requests,
            self.counted,
            self.last,
            done,
        )
        self.last = snapshot.fraction
        try:
            self.on_progress(snapshot)
        except Exception as error:  # progress is for people: it never fails the measurement
            if not self.callback_failed:
                self.log.warning(
                    "%s: the progress callback failed (%s: %s); the load goes on",
                    self.label,
                    type(error).__name__,
                    error,
                )
            self.callback_failed = True

    async def _progress(self) -> None:
        """The callback every progress_every s from the start; without one, a log line every progress_every s
        of measured load."""
        every = self.progress_every or DEFAULT_PROGRESS_EVERY
        if self.on_progress is not None:
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
            self.log.info("%s %s", self.label, _progress_line(self.samples, tick - self.measure_from, every))


async def run_load(url: str, headers: dict | None, pairs: list[tuple[str, str]], **options) -> LoadResult:
    """One load (LoadGenerator's keyword options) from async code."""
    return await LoadGenerator(url, headers, pairs, **options).run()


def load(url: str, headers: dict | None, pairs: list[tuple[str, str]], **options) -> LoadResult:
    """run_load from synchronous code (a Prefect task, a test)."""
    return asyncio.run(run_load(url, headers, pairs, **options))


class TrivialEndpoint:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1 in a thread of its own.

    Answers every request with `status` ["paraphrase"] after `delay` s. `serial=True` answers one
    request at a time (a server with a single worker), so requests queue behind each other.
    """

    BODY = b'["paraphrase"]'

    def __init__(self, delay: float = 0.0, serial: bool = False, status: int = 200, record: bool = False):
        self.delay, self.serial, self.status, self.record = delay, serial, status, record
        self.url = ""
        self.served = 0
        self.bodies: list[bytes] = []  # with record=True: every request body, in arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                if self.record:
                    self.bodies.append(body)
                if self.serial:
                    async with self._lock:
                        await asyncio.sleep(self.delay)
                elif self.delay:
                    await asyncio.sleep(self.delay)
                self.served += 1
                reason = b"OK" if self.status == 200 else b"Error"
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (self.status, reason, len(self.BODY), self.BODY)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _serve(self) -> None:
        async def main() -> None:
            self._lock = asyncio.Lock()
            self._stopped = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
            port = server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/predictions/trivial"
            self._ready.set()
            async with server:
                await self._stopped.wait()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def __enter__(self) -> TrivialEndpoint:
        self._thread = threading.Thread(target=self._serve, name="trivial-endpoint", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the trivial endpoint did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
