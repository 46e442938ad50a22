"""regression: which runs may be compared (the fingerprint), and this run's throughput and p90 against
the median of the last N comparable runs.

Comparable: completed runs of the same flow and deployment (or, run without one, of no
deployment), with the same parameters, whose benchmark table artifact carries the same
fingerprint (model, batching, workers, load, host). Their figures are read back through the
Prefect API from that artifact (key "benchmark"), by the names tasks/measure/figures.py gives them.

One busy-host rule (`busy`): other work used more than BUSY_SHARE of the host's CPUs. It warns about
this run's figures and leaves such nights out of the baseline.
Throughput regresses below median x (1 - tolerance); p90 regresses above median x (1 + tolerance).
With no history the verdict says so and passes.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
from collections.abc import Mapping

from tasks.measure import figures
from tasks.measure.figures import (
    CEILING_OTHER_CORES,
    CPU_HOST_CORES,
    CPU_OTHER_CORES,
    FINGERPRINT,
    INFERENCES_PER_S,
    LATENCY_P90,
    Figure,
)
from tasks.measure.results import BenchmarkResult, Regression

ARTIFACT_KEY = "benchmark"
BUSY_SHARE = 0.1  # other work using more than this share of the host's CPUs: figures unreliable
COMPARED = (INFERENCES_PER_S, LATENCY_P90)  # each Figure says whether higher is better

# --- fingerprint: which runs may be compared -------------------------------------------------

NOT_COMPARED = {
    "serving": {"inference_port", "management_port", "metrics_port", "grpc_inference_port", "grpc_management_port",
                "free_ports", "startup_timeout", "response_timeout"},
    "benchmark": {"enabled", "progress_every", "regression_runs", "regression_tolerance", "regression_action"},
}


def fingerprint(config, resolved) -> str:
    """A short hash of everything that shapes the figures (model, batching, workers, load, host),
    not of what does not (ports, run directory, log cadence)."""
    data = {"host": platform.node(), "resolved": resolved.model_dump(mode="json")}
    for section in ("model", "serving", "benchmark"):
        values = getattr(config, section).model_dump(mode="json")
        data[section] = {k: v for k, v in values.items() if k not in NOT_COMPARED.get(section, set())}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- a busy host -------------------------------------------------------------------------------


def _number(value) -> bool:
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
        warnings.append(f"the host was busy with other work during the load ({found[CPU_OTHER_CORES.name]:.2f} "
                        f"of {cores} CPUs): throughput and latency are lower than this server can do")
    if busy(found, CEILING_OTHER_CORES):
        warnings.append(f"the host was busy with other work while the ceiling was measured "
                        f"({found[CEILING_OTHER_CORES.name]:.2f} of {cores} CPUs): the ceiling, and so "
                        f"served / in-process, are not reliable")
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


def compare(current: Mapping, history: list[Mapping], tolerance: float, action: str = "warn") -> Regression:
    """The verdict on `current` against the medians of `history` (newest first, already chosen);
    both are {figure name: value}, as figures.values and figures_of give them."""
    now = {f.name: float(current[f.name]) for f in COMPARED if _number(current.get(f.name))}
    usable = [h for h in history if all(_number(h.get(f.name)) for f in COMPARED)]
    if not usable:
        return Regression(status="no history", action=action, tolerance=tolerance, current=now,
                          message="no earlier completed run with the same deployment, parameters and "
                                  "fingerprint to compare with; passes")
    baseline = {f.name: float(statistics.median(h[f.name] for h in usable)) for f in COMPARED}
    change, problems = {}, []
    for figure in COMPARED:
        name = figure.name
        if name not in now or not baseline[name]:
            continue
        change[name] = now[name] / baseline[name] - 1
        worse = -change[name] if figure.higher_is_better else change[name]
        if worse > tolerance:
            problems.append(f"{name} {now[name]:.1f} vs median {baseline[name]:.1f} of {len(usable)} runs "
                            f"({change[name]:+.0%}, tolerance {tolerance:.0%})")
    status = "regressed" if problems else "ok"
    message = ("; ".join(problems) if problems else
               f"within {tolerance:.0%} of the median of {len(usable)} earlier runs ("
               + ", ".join(f"{f.name} {change.get(f.name, 0):+.0%}" for f in COMPARED) + ")")
    return Regression(status=status, action=action, runs=len(usable), tolerance=tolerance, baseline=baseline,
                      current=now, change=change, problems=problems, message=message)


def _same(a, b) -> bool:
    return json.dumps(a or {}, sort_keys=True, default=str) == json.dumps(b or {}, sort_keys=True, default=str)


def history(fingerprint: str, limit: int) -> list[dict] | None:
    """Figures of the last `limit` comparable completed runs, newest first; None outside a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
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
    from prefect.runtime import flow_run

    run_id = flow_run.id
    if not run_id:
        return None
    parameters = flow_run.parameters
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(run_id)
        deployment = (FlowRunFilterDeploymentId(any_=[me.deployment_id]) if me.deployment_id
                      else FlowRunFilterDeploymentId(is_null_=True))
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(id=FlowFilterId(any_=[me.flow_id])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[me.id]), deployment_id=deployment,
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            sort=FlowRunSort.START_TIME_DESC, limit=max(50, 10 * limit),
        )
        same = [run for run in runs if _same(run.parameters, parameters)]
        if not same:
            return []
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in same])),
        )
    by_run = {artifact.flow_run_id: figures_of(artifact.data) for artifact in artifacts}
    found = [by_run[run.id] for run in same if run.id in by_run]
    return [night for night in found if night.get(FINGERPRINT.name) == fingerprint and not busy(night)][:limit]


def check(bench: BenchmarkResult, fingerprint: str, runs: int, tolerance: float, action: str) -> Regression:
    """The stage's verdict: skipped when not asked for or outside a flow run; never raises on the API."""
    if runs <= 0:
        return Regression(status="skipped", action=action, tolerance=tolerance, message="regression_runs is 0")
    try:
        found = history(fingerprint, runs)
    except Exception as error:  # a history we cannot read is no reason to fail a benchmark
        return Regression(status="skipped", action=action, tolerance=tolerance,
                          message=f"could not read earlier runs from the Prefect API: {type(error).__name__}: {error}")
    if found is None:
        return Regression(status="skipped", action=action, tolerance=tolerance,
                          message="not in a Prefect flow run: no history to compare with")
    return compare(figures.values(bench), found, tolerance, action)
