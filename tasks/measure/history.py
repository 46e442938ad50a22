"""Earlier nights, read back through the Prefect API: the one query for earlier runs of a deployment, with the data
of their artifacts by kind (tasks/common/keys.py).

The regression reads the benchmark figures of comparable completed nights (`history`: same flow, deployment and
parameters, same fingerprint, the host not busy, started since the accepted baseline); the trend
(tasks/report/trend.py) reads every ended night's outcome and figures with `earlier_runs`. A caller that goes on
without the history catches API_ERRORS (tasks/common/prefect_api.py), never a bug.

The accepted baseline: a real change (a slower library, a new host type that fingerprints the same) regresses every
night until it is accepted -- with regression_action "fail" the regressed nights fail, so they never become history
themselves. `python -m tools.baseline accept <deployment>` writes the time it is accepted from into the Prefect
Variable `bert-validation-baseline-<deployment>` (the artifact keys' suffix: tasks/common/keys.py); nights that
started before it are then no baseline. On the server, for the whole fleet, with no redeploy and no change to the
deployment's parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tasks.common.prefect_api import API_ERRORS
from tasks.measure.busy_host import busy
from tasks.measure.figures import FINGERPRINT

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

POOL = 200  # earlier runs read at most (the API's page): the newest comparable ones are among them
BASELINE_VARIABLE = "bert-validation-baseline-"  # + the artifact keys' suffix: a Prefect Variable, an ISO time
__all__ = ["API_ERRORS", "BASELINE_VARIABLE", "POOL", "Earlier", "accepted_since", "earlier_runs", "figures_of"]
__all__ += ["history", "when"]


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


def when(text: str) -> datetime:
    """An ISO 8601 time (2026-12-06T02:00:00Z, 2026-12-06); one without a zone is UTC. ValueError otherwise."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def accepted_since(suffix: str | None) -> datetime | None:
    """When the baseline of the deployment with this artifact-key suffix was last accepted (tools.baseline), or
    None: every comparable night counts."""
    from prefect.variables import Variable

    if not suffix:
        return None
    value = Variable.get(BASELINE_VARIABLE + suffix, default=None)
    return when(value) if isinstance(value, str) else None


def history(fingerprint: str, limit: int, suffix: str | None = None) -> list[dict] | None:
    """Figures of the last `limit` comparable completed runs, newest first, none from before the accepted baseline
    of `suffix`; None outside a flow run. suffix: whose
    benchmark artifacts (an engine's: tasks/common/keys.py engine_suffix); None: this run's deployment's."""
    from tasks.common.keys import BENCHMARK

    earlier = earlier_runs((BENCHMARK,), POOL, suffix=suffix, need=BENCHMARK)
    if earlier is None:
        return None
    since = accepted_since(suffix)
    if since is not None:
        earlier = [night for night in earlier if night.run.start_time is not None and night.run.start_time >= since]
    found = [figures_of(night.artifacts[BENCHMARK]) for night in earlier]
    return [night for night in found if night.get(FINGERPRINT.name) == fingerprint and not busy(night)][:limit]
