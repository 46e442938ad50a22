"""regression: this run's throughput and p90 against the median of the last N comparable runs.

Comparable: completed runs of the same flow and deployment (or, run without one, of no
deployment), with the same parameters, whose benchmark table artifact carries the same
fingerprint (tasks/benchmark.fingerprint: model, batching, workers, load, host). Their figures
are read back through the Prefect API from that artifact (key "benchmark").

Nights whose host was busy with other work during the load are left out.
Throughput regresses below median x (1 - tolerance); p90 regresses above median x (1 + tolerance).
With no history the verdict says so and passes.
"""

from __future__ import annotations

import json
import statistics

from pydantic import BaseModel

ARTIFACT_KEY = "benchmark"
BUSY_SHARE = 0.1  # other work using more than this share of the host's CPUs: figures unreliable
# figure -> +1 when higher is better, -1 when lower is better
FIGURES = {"inferences_per_s": +1, "latency_ms p90": -1}


class Regression(BaseModel):
    status: str  # "skipped", "no history", "ok", "regressed"
    action: str  # "warn" or "fail"
    runs: int = 0  # prior runs compared with
    tolerance: float
    baseline: dict[str, float] = {}  # medians of the prior runs
    current: dict[str, float] = {}
    change: dict[str, float] = {}  # current / baseline - 1
    problems: list[str] = []
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "regressed" and self.action == "fail"


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


def compare(current: dict, history: list[dict], tolerance: float, action: str = "warn") -> Regression:
    """The verdict on `current` against the medians of `history` (newest first, already chosen)."""
    now = {name: float(current[name]) for name in FIGURES if isinstance(current.get(name), (int, float))}
    usable = [h for h in history if all(isinstance(h.get(name), (int, float)) for name in FIGURES)]
    if not usable:
        return Regression(status="no history", action=action, tolerance=tolerance, current=now,
                          message="no earlier completed run with the same deployment, parameters and "
                                  "fingerprint to compare with; passes")
    baseline = {name: float(statistics.median(h[name] for h in usable)) for name in FIGURES}
    change, problems = {}, []
    for name, better in FIGURES.items():
        if name not in now or not baseline[name]:
            continue
        change[name] = now[name] / baseline[name] - 1
        worse = -change[name] if better > 0 else change[name]
        if worse > tolerance:
            problems.append(f"{name} {now[name]:.1f} vs median {baseline[name]:.1f} of {len(usable)} runs "
                            f"({change[name]:+.0%}, tolerance {tolerance:.0%})")
    status = "regressed" if problems else "ok"
    message = ("; ".join(problems) if problems else
               f"within {tolerance:.0%} of the median of {len(usable)} earlier runs ("
               + ", ".join(f"{name} {change.get(name, 0):+.0%}" for name in FIGURES) + ")")
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
    return [figures for figures in found if figures.get("fingerprint") == fingerprint and not busy(figures)][:limit]


def busy(figures: dict) -> bool:
    """A night whose host was busy with other work during the load is no baseline."""
    other, cores = figures.get("cpu other_cores"), figures.get("cpu host_cores")
    return isinstance(other, (int, float)) and isinstance(cores, (int, float)) and other > BUSY_SHARE * cores


def check(bench, fingerprint: str, runs: int, tolerance: float, action: str) -> Regression:
    """The stage's verdict: skipped when not asked for or outside a flow run; never raises on the API."""
    if runs <= 0:
        return Regression(status="skipped", action=action, tolerance=tolerance, message="regression_runs is 0")
    current = {"inferences_per_s": bench.inferences_per_s, "latency_ms p90": bench.latency_ms.p90}
    try:
        found = history(fingerprint, runs)
    except Exception as error:  # a history we cannot read is no reason to fail a benchmark
        return Regression(status="skipped", action=action, tolerance=tolerance,
                          message=f"could not read earlier runs from the Prefect API: {type(error).__name__}: {error}")
    if found is None:
        return Regression(status="skipped", action=action, tolerance=tolerance,
                          message="not in a Prefect flow run: no history to compare with")
    return compare(current, found, tolerance, action)
