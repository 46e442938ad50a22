"""Capacity at a latency bound: the highest rate of Poisson arrivals the server takes while a tail
percentile of its latency stays within a bound -- MLPerf's Server scenario, the figure a fleet is sized with.

The search, from the rate the closed loop served (the most this server answered, so the answer is near):
  bracket  step at that rate; while steps pass, go up by `precision`; while they fail, down by SHRINK, until
           one passing and one failing rate enclose the capacity;
  bisect   step halfway between them until they are within `precision` of each other (relative).
Every step is open-loop Poisson load (loadgen.arrival_times; one seed for every step, so two steps differ
only in their rate), latency from each request's intended send time. A step passes when its percentile is
within the bound, it has no error and no dropped request, and the server kept up: it answered at least KEPT_UP
of what was sent in the step's window. (An overloaded server's queue grows through the step; in a step of a
few seconds its percentile may not show it yet, but the answers falling behind the sends do. A server that
keeps up answers about as many as were sent -- as many are in flight when the window opens as when it closes.)

How long a step lasts (the rule MLPerf states as a minimum duration and a minimum query count; MLPerf's own,
600 s and 270,336 queries, would take a night): at least `min_step_seconds`, and at least enough requests
that `beyond` of them are expected past the percentile (p99, beyond 5: 500 requests) -- a tail percentile
estimated from fewer than a handful of requests above it is one request's luck. A step that would not fit in
what is left of `budget_seconds` is not started: the search then reports the bracket it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from pydantic import BaseModel

from tasks.measure import loadgen
from tasks.measure.loadgen import LoadResult, percentiles

# Bracketing up: a passing step's rate x (1 + precision), so that one failing step above the start is already
# within the precision -- the start is the most the closed loop got answered, so more is rarely sustainable.
SHRINK = 0.7  # bracketing down: a failing step's rate x this (the capacity is usually a little below the start)
MIN_RATE = 0.1  # requests/s: below this no rate is worth a step
# Answered / sent in a step's window at or above this: the server kept up. Measured here (2-core EPYC, 2026-12-05):
# 0.99-1.02 in steps the server sustained, 0.88-0.91 in overloaded ones.
KEPT_UP = 0.95


class CapacityStep(BaseModel):
    """One step of the search: Poisson load offered at `rate`."""

    rate: float  # offered, requests/s
    achieved: float  # answered, requests/s
    sent: float | None = None  # sent in the measured window, requests/s (Poisson: near `rate`, not exactly)
    seconds: float  # measured
    requests: int  # measured requests (dropped ones included)
    p50: float  # ms, from the intended send time, of the answered requests
    p90: float
    p99: float
    percentile_ms: float  # at the search's percentile
    errors: int
    dropped: int
    passed: bool


class Capacity(BaseModel):
    """summary.json's benchmark.capacity."""

    arrivals: str = "poisson"
    percentile: float
    bound_ms: float
    rate: float | None  # the highest passing offered rate, requests/s; None: no step passed
    failed_rate: float | None  # the lowest failing offered rate above it; None: none failed
    start_rate: float  # where the search began: the closed loop's throughput
    precision: float
    stopped: str  # why the search ended, in words
    rule: str  # how long each step lasted, in words
    steps: list[CapacityStep]


def step_seconds(rate: float, percentile: float, min_seconds: float, beyond: int) -> float:
    """A step's measured duration: at least min_seconds, and long enough that `beyond` requests are
    expected past the percentile."""
    return max(min_seconds, min_requests(percentile, beyond) / rate)


def min_requests(percentile: float, beyond: int) -> int:
    """Requests for `beyond` of them to be expected past the percentile (rounded first: 5 / 0.1 is 50)."""
    return math.ceil(round(beyond / (1 - percentile / 100), 6))


def step_of(result: LoadResult, percentile: float, bound_ms: float) -> CapacityStep:
    """A measured Poisson load as a step of the search, judged against the bound."""
    assert result.rate is not None, "a capacity step is an open-loop load"
    latencies = [s.latency for s in result.ok]
    figures = percentiles(latencies)
    at = percentiles_at(latencies, percentile)
    sent = len(result.measured) / result.seconds if result.seconds > 0 else 0.0
    kept_up = result.requests_per_s >= KEPT_UP * sent
    passed = bool(latencies) and at <= bound_ms and result.errors == 0 and result.dropped == 0 and kept_up
    return CapacityStep(
        rate=result.rate,
        achieved=result.requests_per_s,
        sent=sent,
        seconds=result.seconds,
        requests=len(result.measured),
        p50=figures.p50,
        p90=figures.p90,
        p99=figures.p99,
        percentile_ms=at,
        errors=result.errors,
        dropped=result.dropped,
        passed=passed,
    )


def percentiles_at(latencies: list[float], percentile: float) -> float:
    """ms at one percentile (NaN: nothing answered), with the interpolation percentiles() uses."""
    return float(np.percentile(np.asarray(latencies) * 1000, percentile)) if latencies else float("nan")


class Search:
    """The bracketing and bisection, around a `measure(rate, seconds) -> CapacityStep` callback."""

    def __init__(
        self,
        measure: Callable[[float, float], CapacityStep],
        *,
        bound_ms: float,
        percentile: float = 99,
        precision: float = 0.1,
        min_step_seconds: float = 5.0,
        beyond: int = 5,
        budget_seconds: float = 60.0,
        step_overhead_s: float = 0.0,
    ):
        self.measure, self.bound_ms, self.percentile, self.precision = measure, bound_ms, percentile, precision
        self.min_step_seconds, self.beyond, self.budget_seconds = min_step_seconds, beyond, budget_seconds
        self.step_overhead_s = step_overhead_s  # per step, besides its measured seconds (its warm-up)
        self.steps: list[CapacityStep] = []
        self.spent = 0.0
        self.passing: float | None = None
        self.failing: float | None = None

    def run(self, start_rate: float) -> Capacity:
        stopped = self._bracket(max(start_rate, MIN_RATE))
        if stopped is None:
            stopped = self._bisect()
        return Capacity(
            percentile=self.percentile,
            bound_ms=self.bound_ms,
            rate=self.passing,
            failed_rate=self.failing,
            start_rate=start_rate,
            precision=self.precision,
            stopped=stopped,
            rule=self.rule(),
            steps=self.steps,
        )

    def rule(self) -> str:
        return (
            f"each step at least {self.min_step_seconds:g} s and "
            f"{min_requests(self.percentile, self.beyond)} requests ({self.beyond} expected past "
            f"p{self.percentile:g}), within a budget of {self.budget_seconds:g} s"
        )

    def _step(self, rate: float) -> bool | None:
        """Measure at `rate`: whether it passed; None when the budget has no room for it."""
        seconds = step_seconds(rate, self.percentile, self.min_step_seconds, self.beyond)
        if self.spent + seconds + self.step_overhead_s > self.budget_seconds:
            return None
        step = self.measure(rate, seconds)
        self.spent += seconds + self.step_overhead_s
        self.steps.append(step)
        if step.passed:
            self.passing = max(self.passing or 0.0, rate)
        else:
            self.failing = rate if self.failing is None else min(self.failing, rate)
        return step.passed

    def _bracket(self, rate: float) -> str | None:
        """Steps until a passing and a failing rate enclose the capacity; a reason when the search must end."""
        while self.passing is None or self.failing is None:
            passed = self._step(rate)
            if passed is None:
                return "budget spent while bracketing"
            rate = rate * (1 + self.precision) if passed else rate * SHRINK
            if rate < MIN_RATE:
                return f"no rate down to {MIN_RATE:g} requests/s met the bound"
        return None

    def _bisect(self) -> str:
        assert self.passing is not None and self.failing is not None
        while (self.failing - self.passing) / self.failing > self.precision:
            if self._step((self.passing + self.failing) / 2) is None:
                return f"budget spent with the bracket {self.passing:.3g}-{self.failing:.3g} requests/s"
        return f"within {self.precision:.0%}"


def poisson_steps(
    url: str,
    headers: dict,
    pairs: list[tuple[str, str]],
    *,
    concurrency: int,
    bound_ms: float,
    percentile: float,
    seed: int = 0,
    warmup: float = 1.0,
) -> Callable[[float, float], CapacityStep]:
    """The search's measure: Poisson load at a rate for a number of seconds, after `warmup` s sent unmeasured
    (each step starts from an idle server; the warm-up lets its queue reach the rate's steady state).
    `concurrency` caps the open connections, and as many requests may wait for one; more are dropped."""

    def measure(rate: float, seconds: float) -> CapacityStep:
        poisson = loadgen.Load(
            mode="open",
            arrivals="poisson",
            seed=seed,
            rate=rate,
            duration=seconds,
            warmup=warmup,
            concurrency=concurrency,
            max_backlog=concurrency,
        )
        result = loadgen.load(url, headers, pairs, poisson)
        return step_of(result, percentile, bound_ms)

    return measure
