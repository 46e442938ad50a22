"""regression: every headline figure of this run against the median of the last N comparable nights.

Comparable nights (their fingerprint, tasks/measure/fingerprint.py; read back through the Prefect API,
tasks/measure/history.py; busy ones left out, tasks/measure/busy_host.py) give a baseline per figure.

COMPARED: throughput, client p50 / p90 / p99, error rate, model load time, memory, accuracy, served / in-process
and the capacity. Each is compared with the median of the nights that have it. It regresses when it moved the
wrong way by more than it is allowed: its tolerance (benchmark.regression_tolerances, whose defaults are
tasks/common/config.py REGRESSION_TOLERANCES, else regression_tolerance; relative to the median, or in the
figure's unit for a rate near zero such as the error rate), or, when wider, the earlier nights' own spread
(NOISE_SIGMAS robust standard deviations, 1.4826 x the median absolute deviation): a change inside the nights' own
noise is not flagged. Every compared figure goes into the verdict's table, moved or not. With no history the
verdict says so and passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.common.config import REGRESSION_TOLERANCES
from tasks.common.prefect_api import API_ERRORS
from tasks.measure import figures
from tasks.measure.busy_host import number
from tasks.measure.figures import (
    ACCURACY,
    CAPACITY_RATE,
    COMPARISON_UNRELIABLE,
    ERROR_RATE,
    INFERENCES_PER_S,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P99,
    LOAD_READY,
    MEMORY_TOTAL,
    SERVED_OVER_CEILING,
    Figure,
)
from tasks.measure.history import history
from tasks.measure.results import BenchmarkResult, Moved, Regression

NOISE_SIGMAS = 3.0  # a change within this many robust standard deviations of the earlier nights is noise


@dataclass(frozen=True)
class Compared:
    figure: Figure  # says whether higher is better
    absolute: bool = False  # tolerance in the figure's own unit: a rate whose median may be 0


COMPARED = (
    Compared(INFERENCES_PER_S),
    Compared(LATENCY_P50),
    Compared(LATENCY_P90),
    Compared(LATENCY_P99),
    Compared(ERROR_RATE, absolute=True),
    Compared(LOAD_READY),
    Compared(MEMORY_TOTAL),
    Compared(ACCURACY, absolute=True),
    Compared(SERVED_OVER_CEILING),
    Compared(CAPACITY_RATE),
)


def _number_or_none(value) -> float | None:
    return float(value) if number(value) and not np.isnan(value) else None


def compare(
    current: Mapping,
    nights: Sequence[Mapping],
    tolerance: float,
    action: str = "warn",
    tolerances: Mapping[str, float] | None = None,
) -> Regression:
    """The verdict on `current` against the medians of earlier `nights` (newest first, already chosen); both
    are {figure name: value}, as figures.values and history.figures_of give them. `tolerances` over the defaults
    (REGRESSION_TOLERANCES); a figure neither names is allowed `tolerance`."""
    tolerances = {**REGRESSION_TOLERANCES, **(tolerances or {})}
    now = {c.figure.name: v for c in COMPARED if (v := _number_or_none(current.get(c.figure.name))) is not None}
    usable = [h for h in nights if any(_number_or_none(h.get(c.figure.name)) is not None for c in COMPARED)]
    if not usable:
        return Regression(
            status="no history",
            action=action,
            tolerance=tolerance,
            current=now,
            message="no earlier completed run with the same deployment, parameters and "
            "fingerprint to compare with; passes",
        )
    baseline, change, problems, table = {}, {}, [], []
    for compared in COMPARED:
        name = compared.figure.name
        past = _past(usable, name)
        if past.size == 0 or name not in now:
            continue
        allowed_tolerance = tolerances.get(name, tolerance)
        row = _moved(compared, now[name], past, allowed_tolerance)
        table.append(row)
        baseline[name] = row.baseline
        if row.relative is not None:
            change[name] = row.relative
        if row.regressed:
            moved = (
                f"{row.relative:+.0%}" if row.relative is not None and not compared.absolute else f"{row.change:+.3g}"
            )
            unit = f" {row.unit}" if row.unit else ""
            problems.append(
                f"{name} {row.current:.1f} vs median {row.baseline:.1f} of {past.size} runs "
                f"({moved}, allowed {row.allowed:.3g}{unit})"
            )
    status = "regressed" if problems else "ok"
    message = (
        "; ".join(problems)
        if problems
        else f"{len(table)} figures within tolerance of the median of {len(usable)} earlier runs ("
        + ", ".join(
            f"{row.figure} {row.relative:+.0%}"
            if row.relative is not None and not row.absolute
            else f"{row.figure} {row.change:+.3g}"
            for row in table
        )
        + ")"
    )
    return Regression(
        status=status,
        action=action,
        runs=len(usable),
        tolerance=tolerance,
        baseline=baseline,
        current=now,
        change=change,
        problems=problems,
        message=message,
        table=table,
    )


def _past(usable: Sequence[Mapping], name: str) -> np.ndarray:
    """A figure's values on the earlier nights that have it; a night whose served / in-process was unreliable
    is no baseline for that ratio."""
    unreliable = name == SERVED_OVER_CEILING.name
    return np.array(
        [
            value
            for night in usable
            if (value := _number_or_none(night.get(name))) is not None
            and not (unreliable and night.get(COMPARISON_UNRELIABLE.name))
        ]
    )


def _moved(compared: Compared, current: float, past: np.ndarray, tolerance: float) -> Moved:
    """Tonight's figure against the median of `past`: regressed when worse by more than the tolerance (of the
    median, or absolute) and more than the earlier nights' own noise (NOISE_SIGMAS robust deviations)."""
    figure = compared.figure
    median = float(np.median(past))
    spread = NOISE_SIGMAS * 1.4826 * float(np.median(np.abs(past - median)))
    allowed = max(tolerance if compared.absolute else tolerance * abs(median), spread)
    delta = current - median
    worse = -delta if figure.higher_is_better else delta
    return Moved(
        figure=figure.name,
        unit=figure.unit,
        higher_is_better=bool(figure.higher_is_better),
        current=current,
        baseline=median,
        change=delta,
        relative=current / median - 1 if median else None,
        tolerance=tolerance,
        absolute=compared.absolute,
        spread=spread,
        allowed=allowed,
        regressed=worse > allowed and worse > 0,
    )


def check(
    bench: BenchmarkResult,
    fingerprint: str,
    runs: int,
    tolerance: float,
    action: str,
    tolerances: Mapping[str, float] | None = None,
    suffix: str | None = None,
) -> Regression:
    """The stage's verdict: skipped when not asked for or outside a flow run; an API that fails to answer is no
    reason to fail a benchmark (API_ERRORS), a bug is. suffix: the engine's artifact keys (tasks/common/keys.py),
    whose earlier nights are read and whose accepted baseline (tools.baseline) the history starts at; None: this
    run's deployment's."""
    if runs <= 0:
        return Regression(status="skipped", action=action, tolerance=tolerance, message="regression_runs is 0")
    try:
        found = history(fingerprint, runs, suffix)
    except API_ERRORS as error:
        return Regression(
            status="skipped",
            action=action,
            tolerance=tolerance,
            message=f"could not read earlier runs from the Prefect API: {type(error).__name__}: {error}",
        )
    if found is None:
        return Regression(
            status="skipped",
            action=action,
            tolerance=tolerance,
            message="not in a Prefect flow run: no history to compare with",
        )
    current = figures.values(bench)
    if bench.comparison_unreliable:  # shown, not compared: tonight's ratio is not a steady state's
        current.pop(SERVED_OVER_CEILING.name, None)
    return compare(current, found, tolerance, action, tolerances)
