"""benchmark: N concurrent clients (the tutorial's 64) posting pairs in a loop for a set duration.

Closed loop on httpx's async client: each client sends its next request when the last one
answered. Requests during the warm-up are sent but not counted. Latency percentiles by numpy.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import httpx
import numpy as np
from pydantic import BaseModel

from tasks.check import NOT_PARAPHRASE, PARAPHRASE

PROGRESS_EVERY = 10.0  # s, as the tutorial printed


class LatencyMs(BaseModel):
    p50: float
    p90: float
    p99: float
    mean: float


class BenchmarkResult(BaseModel):
    requests_per_s: float
    inferences_per_s: float
    latency_ms: LatencyMs
    requests: int
    errors: int
    concurrency: int
    seconds: float


def summarize(latencies_s: list[float], errors: int, concurrency: int, seconds: float) -> BenchmarkResult:
    """Throughput counts answered requests only; each request is one pair, so one inference."""
    ms = np.array(latencies_s, dtype=float) * 1000 if latencies_s else np.array([np.nan])
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    rate = len(latencies_s) / seconds if seconds > 0 else 0.0
    return BenchmarkResult(
        requests_per_s=rate,
        inferences_per_s=rate,
        latency_ms=LatencyMs(p50=p50, p90=p90, p99=p99, mean=float(np.mean(ms))),
        requests=len(latencies_s) + errors,
        errors=errors,
        concurrency=concurrency,
        seconds=seconds,
    )


async def _run(url: str, headers: dict, concurrency: int, duration: float, warmup: float,
               log: logging.Logger) -> BenchmarkResult:
    pairs = itertools.cycle([PARAPHRASE[:2], NOT_PARAPHRASE[:2]])
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while (sent := time.monotonic()) < stop_at:
            seq_0, seq_1 = next(pairs)
            try:
                answer = await client.post(url, data={"seq_0": seq_0, "seq_1": seq_1})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            if sent >= measure_from:
                if ok:
                    latencies.append(time.monotonic() - sent)
                else:
                    errors += 1

    async def progress() -> None:
        while time.monotonic() < stop_at:
            await asyncio.sleep(PROGRESS_EVERY)
            elapsed = time.monotonic() - measure_from
            if elapsed > 0 and latencies:
                ms = np.array(latencies) * 1000
                log.info("benchmark %4.0f s: %.1f inferences/s, p50 %.0f ms, p90 %.0f ms, errors %d",
                         elapsed, len(latencies) / elapsed, np.percentile(ms, 50), np.percentile(ms, 90), errors)

    async with httpx.AsyncClient(headers=headers, timeout=120, limits=limits) as client:
        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        reporter.cancel()
    # Clients finish their last request after stop_at; count the time they actually took.
    seconds = max(time.monotonic(), stop_at) - measure_from
    return summarize(latencies, errors, concurrency, seconds)


def benchmark(url: str, headers: dict, concurrency: int, duration: float, warmup: float = 0.0,
              log: logging.Logger | None = None) -> BenchmarkResult:
    return asyncio.run(_run(url, headers, concurrency, duration, warmup, log or logging.getLogger(__name__)))
