"""regression: which runs may be compared (the fingerprint), and every headline figure of this run
against the median of the last N comparable runs.

Comparable: completed runs of the same flow and deployment (or, run without one, of no
deployment), with the same parameters, whose benchmark table artifact carries the same
fingerprint (model, batching, workers, load, accuracy file, host type -- not host name, so a fleet
of identical hosts shares its nights). Their figures are read back through the Prefect API from
that artifact (key "benchmark-<deployment>", tasks/common/keys.py), by the names tasks/measure/figures.py
gives them. `earlier_runs` is the one query for earlier runs of a deployment: the trend
(tasks/report/trend.py) reads its rows with it too.

One busy-host rule (`busy`): other work used more than BUSY_SHARE of the host's CPUs. It warns about
this run's figures and leaves such nights out of the baseline.

COMPARED: throughput, client p50 / p90 / p99, error rate, model load time, memory, accuracy and
served / in-process. Each is compared with the median of the nights that have it. It regresses when
it moved the wrong way by more than it is allowed: its tolerance (benchmark.regression_tolerances,
else regression_tolerance; relative to the median, or in the figure's unit for a rate near zero
such as the error rate), or, when wider, the earlier nights' own spread (NOISE_SIGMAS robust
standard deviations, 1.4826 x the median absolute deviation): a change inside the nights' own
noise is not flagged. Every compared figure goes into the verdict's table, moved or not.
With no history the verdict says so and passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from tasks.measure import figures
from tasks.measure.figures import (
    ACCURACY,
    CAPACITY_RATE,
    CEILING_OTHER_CORES,
    COMPARISON_UNRELIABLE,
    CPU_HOST_CORES,
    CPU_OTHER_CORES,
    ERROR_RATE,
    FINGERPRINT,
    INFERENCES_PER_S,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P99,
    LOAD_READY,
    MEMORY_TOTAL,
    SERVED_OVER_CEILING,
    Figure,
)
from tasks.measure.results import BenchmarkResult, Moved, Regression

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

BUSY_SHARE = 0.1  # other work using more than this share of the host's CPUs: figures unreliable
POOL = 200  # earlier runs read at most (the API's page): the newest comparable ones are among them
NOISE_SIGMAS = 3.0  # a change within this many robust standard deviations of the earlier nights is noise


@dataclass(frozen=True)
class Compared:
    figure: Figure  # says whether higher is better
    absolute: bool = False  # tolerance in the figure's own unit: a rate whose median may be 0
    tolerance: float | None = None  # default when the config names none (None: regression_tolerance)


COMPARED = (
    Compared(INFERENCES_PER_S),
    Compared(LATENCY_P50),
    Compared(LATENCY_P90),
    Compared(LATENCY_P99),
    Compared(ERROR_RATE, absolute=True, tolerance=0.01),
    Compared(LOAD_READY),
    Compared(MEMORY_TOTAL),
    Compared(ACCURACY, absolute=True, tolerance=0.01),
    Compared(SERVED_OVER_CEILING),
    Compared(CAPACITY_RATE),
)

# --- fingerprint: which runs may be compared -------------------------------------------------

NOT_COMPARED = {
    "serving": {
        "inference_port",
        "management_port",
        "metrics_port",
        "grpc_inference_port",
        "grpc_management_port",
        "free_ports",
        "startup_timeout",
        "response_timeout",
    },
    "benchmark": {
        "enabled",
        "progress_every",
        "regression_runs",
        "regression_tolerance",
        "regression_tolerances",
        "regression_action",
        "compare_buckets",
        "compare_seconds",
        "telemetry_every",
        "stability_cv",
        "window",
    },
}


def host_type() -> dict:
    """What kind of machine: architecture, CPU model, CPUs, memory -- not its name."""
    import psutil

    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), ""
        )
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
    }


def fingerprint(config, resolved) -> str:
    """A short hash of everything that shapes the figures (model, batching, workers, load, accuracy
    file, host type), not of what does not (ports, run directory, log cadence, host name)."""
    accuracy_file = config.checks.accuracy_file
    data = {
        "host": host_type(),
        "resolved": resolved.model_dump(mode="json"),
        "accuracy_file": accuracy_file.name if accuracy_file else None,
    }
    for section in ("model", "serving", "benchmark"):
        values = getattr(config, section).model_dump(mode="json")
        data[section] = {k: v for k, v in values.items() if k not in NOT_COMPARED.get(section, set())}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- a busy host -------------------------------------------------------------------------------


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def busy(found: Mapping, other: Figure = CPU_OTHER_CORES) -> bool:
    """Other work used more than BUSY_SHARE of the host's CPUs (by default during the load), in a
    run's figures: this run's (figures.values) or an earlier night's artifact (figures_of).
    Figures without CPU accounting (older nights) are not busy."""
    used, cores = found.get(other.name), found.get(CPU_HOST_CORES.name)
    return _number(used) and _number(cores) and used > BUSY_SHARE * cores


def busy_host_warnings(bench: BenchmarkResult) -> list[str]:
    """Other work on the host competes with the server and with the ceiling: say so, with how much."""
    found = figures.values(bench)
    cores = found.get(CPU_HOST_CORES.name)
    warnings = []
    if busy(found):
        warnings.append(
            f"the host was busy with other work during the load ({found[CPU_OTHER_CORES.name]:.2f} "
            f"of {cores} CPUs): throughput and latency are lower than this server can do"
        )
    if busy(found, CEILING_OTHER_CORES):
        warnings.append(
            f"the host was busy with other work while the ceiling was measured "
            f"({found[CEILING_OTHER_CORES.name]:.2f} of {cores} CPUs): the ceiling, and so "
            f"served / in-process, are not reliable"
        )
    return warnings


# --- the verdict -------------------------------------------------------------------------------


def figures_of(rows) -> dict:
    """{figure: value} from a benchmark table artifact's data (a JSON string or a list of rows)."""
    if isinstance(rows, str):
        try:
            rows = json.loads(rows)
        except json.JSONDecodeError:
            return {}
    if not isinstance(rows, list):
        return {}
    return {row.get("figure"): row.get("value") for row in rows if isinstance(row, dict)}


def _number_or_none(value) -> float | None:
    return float(value) if _number(value) and not np.isnan(value) else None


def compare(
    current: Mapping,
    history: Sequence[Mapping],
    tolerance: float,
    action: str = "warn",
    tolerances: Mapping[str, float] | None = None,
) -> Regression:
    """The verdict on `current` against the medians of `history` (newest first, already chosen);
    both are {figure name: value}, as figures.values and figures_of give them."""
    tolerances = tolerances or {}
    now = {c.figure.name: v for c in COMPARED if (v := _number_or_none(current.get(c.figure.name))) is not None}
    usable = [h for h in history if any(_number_or_none(h.get(c.figure.name)) is not None for c in COMPARED)]
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
        allowed_tolerance = tolerances.get(name, compared.tolerance if compared.tolerance is not None else tolerance)
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


def _same(a, b) -> bool:
    return json.dumps(a or {}, sort_keys=True, default=str) == json.dumps(b or {}, sort_keys=True, default=str)


@dataclass
class Earlier:
    """An earlier flow run of this deployment and its artifacts' data by kind (tasks/common/keys.py)."""

    run: FlowRun  # name, state, start_time, parameters
    artifacts: dict


def earlier_runs(
    kinds: tuple[str, ...],
    limit: int,
    suffix: str | None = None,
    completed_only: bool = True,
    same_parameters: bool = True,
    need: str | None = None,
) -> list[Earlier] | None:
    """The earlier flow runs of this flow and deployment (run without one: of no deployment), newest
    first, at most `limit`, each with the data of its artifacts of `kinds`; None outside a flow run.

    An artifact's key is `<kind>-<suffix>` (tasks/common/keys.py). suffix None: this run's deployment
    when it has one; without one, any `<kind>-adhoc-*` (the caller's fingerprint tells backends apart).
    A deployment's runs from before per-deployment keys are found by the legacy global key.
    Ad-hoc runs of every backend share "no deployment": only those with an artifact of this suffix are
    kept. `need`: keep only runs that have an artifact of that kind.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment as this_deployment
    from prefect.runtime import flow_run

    from tasks.common import keys

    run_id = flow_run.id
    if not run_id:
        return None
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(run_id)
        if suffix is None and me.deployment_id:
            suffix = keys.suffix(this_deployment.name, None)
        runs = _ended_runs(client, me, completed_only)
        if same_parameters:
            runs = [run for run in runs if _same(run.parameters, flow_run.parameters)]
        if not runs:
            return []
        found = _artifacts_by_run(client, runs, kinds, suffix, legacy=bool(me.deployment_id))
    adhoc = not me.deployment_id
    kept = [
        Earlier(run, found.get(run.id, {}))
        for run in runs
        if (not adhoc or run.id in found) and (need is None or need in found.get(run.id, {}))
    ]
    return kept[:limit]


def _ended_runs(client, me, completed_only: bool) -> list:
    """This flow's other runs of the same deployment (or of none), ended, newest first (at most POOL)."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    ended = [StateType.COMPLETED]
    if not completed_only:
        ended += [StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    deployment = (
        FlowRunFilterDeploymentId(any_=[me.deployment_id])
        if me.deployment_id
        else FlowRunFilterDeploymentId(is_null_=True)
    )
    return client.read_flow_runs(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[me.flow_id])),
        flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(not_any_=[me.id]),
            deployment_id=deployment,
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ended)),
        ),
        sort=FlowRunSort.START_TIME_DESC,
        limit=POOL,
    )


def _artifacts_by_run(client, runs: list, kinds: tuple[str, ...], suffix: str | None, legacy: bool) -> dict:
    """{flow run id: {kind: the data of its artifact of that kind}}, one query per kind: a run holds one
    artifact of a key, so at most len(runs) rows. legacy: a deployment's runs also by the old global key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from tasks.common import keys

    found: dict = {}
    for kind in kinds:
        wanted = {keys.key(kind, suffix)} if suffix else set()
        if legacy and kind in keys.LEGACY:
            wanted.add(keys.LEGACY[kind])
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_=f"{kind}-{keys.ADHOC}-" if not suffix else kind)
            ),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in runs])),
            limit=200,
        )
        for artifact in artifacts:
            key = artifact.key or ""
            if key in wanted or (not suffix and key.startswith(f"{kind}-{keys.ADHOC}-")):
                found.setdefault(artifact.flow_run_id, {}).setdefault(kind, artifact.data)
    return found


def history(fingerprint: str, limit: int) -> list[dict] | None:
    """Figures of the last `limit` comparable completed runs, newest first; None outside a flow run."""
    from tasks.common.keys import BENCHMARK

    earlier = earlier_runs((BENCHMARK,), POOL, need=BENCHMARK)
    if earlier is None:
        return None
    found = [figures_of(night.artifacts[BENCHMARK]) for night in earlier]
    return [night for night in found if night.get(FINGERPRINT.name) == fingerprint and not busy(night)][:limit]


def check(
    bench: BenchmarkResult,
    fingerprint: str,
    runs: int,
    tolerance: float,
    action: str,
    tolerances: Mapping[str, float] | None = None,
) -> Regression:
    """The stage's verdict: skipped when not asked for or outside a flow run; never raises on the API."""
    if runs <= 0:
        return Regression(status="skipped", action=action, tolerance=tolerance, message="regression_runs is 0")
    try:
        found = history(fingerprint, runs)
    except Exception as error:  # a history we cannot read is no reason to fail a benchmark
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
