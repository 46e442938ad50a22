"""The trend through a real Prefect API: each deployment's trend lists that deployment's runs only,
newest first, this run on top; ad-hoc runs are grouped by backend; a failed run with no artifacts
still gets a row naming its stage. No TorchServe: each "night" is a tiny flow run that publishes what
Run._report publishes (tasks/report/summary.py publish_artifacts, then the trend), run by Prefect's
engine inside a flow run created from a deployment, as a worker would."""

from pathlib import Path
from tempfile import mkdtemp

import pytest
from prefect import flow, runtime
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.flow_engine import run_flow_sync

from flows.stages import Stages
from tasks.common import keys
from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult
from tasks.report.summary import publish_artifacts
from tasks.report.trend import publish_trend
from tests.nights import summary as summary_of

pytestmark = pytest.mark.e2e


@flow(name="trend-probe")
def night(rate: float = 0.0, backend: str = "cpu", fail_stage: str = "") -> str | None:
    """rate 0: no benchmark; fail_stage: the run fails there before publishing anything."""
    if fail_stage:
        raise RuntimeError(f"stage {fail_stage} failed: planted")
    stages = Stages(["trace", "benchmark", "stop"])
    for name in stages.records:
        with stages.run(name):
            pass
    bench = (
        BenchmarkResult(
            requests_per_s=rate,
            inferences_per_s=rate,
            latency_ms=percentiles([0.5] * 10),
            requests=10,
            errors=0,
            concurrency=4,
            seconds=1.0,
        )
        if rate
        else None
    )
    run_dir = Path(mkdtemp())
    summary = summary_of(stages, bench=bench, run_dir=run_dir)
    suffix = keys.current_suffix(backend)
    publish_artifacts(summary, [], run_dir, None, suffix)
    return publish_trend(
        keys.deployment_name() or suffix, suffix, runtime.flow_run.name, "2026-11-25 02:00", summary, run_dir
    )


def _deployment(client, name: str):
    flow_id = client.create_flow(night)
    return client.create_deployment(flow_id=flow_id, name=name, entrypoint="tests/e2e/test_trend.py:night")


def _run(client, deployment_id, **parameters):
    flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    state = run_flow_sync(night, flow_run=flow_run, parameters=parameters, return_type="state")
    return flow_run, state.result(raise_on_failure=False)


def _names(text: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]  # past the header
    return [row.split("|")[1].strip() for row in rows]


def test_each_deployments_trend_lists_its_own_runs_only(prefect_server):
    with get_client(sync_client=True) as client:
        alpha, beta = _deployment(client, "trend-alpha"), _deployment(client, "trend-beta")
        a1, _ = _run(client, alpha, rate=20.0)
        b1, _ = _run(client, beta, rate=99.0)
        a2, _ = _run(client, alpha, fail_stage="start")  # fails before any artifact
        b2, _ = _run(client, beta, rate=98.0)
        a3, _ = _run(client, alpha)  # benchmark off: a row without figures
        a4, text = _run(client, alpha, rate=18.0)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["trend-trend-alpha"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[a4.id])),
        )

    assert text.splitlines()[0] == "# Trend: trend-alpha"
    assert _names(text) == [a4.name, a3.name, a2.name, a1.name]  # newest first, none of beta's
    assert b1.name not in text and b2.name not in text and "99.0" not in text
    table = [each for each in text.splitlines() if each.startswith("| ")][1:]  # after the header row
    rows = dict(zip(_names(text), table, strict=True))
    assert "**failed: start**" in rows[a2.name]
    assert "18.0" in rows[a4.name] and "20.0" in rows[a1.name]
    assert "![trend](data:image/png;base64," in text
    assert len(artifacts) == 1 and artifacts[0].data == text  # published under this deployment's key


def test_ad_hoc_trend_is_per_backend_and_one_row_without_history(prefect_server):
    first = night(rate=10.0, backend="gpu-probe")  # no earlier ad-hoc run of this backend: one row
    assert first.splitlines()[0] == "# Trend: adhoc-gpu-probe" and len(_names(first)) == 1
    night(rate=77.0, backend="other-probe")
    second = night(rate=11.0, backend="gpu-probe")
    assert len(_names(second)) == 2 and "77.0" not in second


def test_an_unreadable_history_leaves_a_trend_of_this_run_alone(prefect_server, monkeypatch):
    from tasks.report import trend

    def broken(suffix, limit=13):
        raise ConnectionError("the API went away")

    monkeypatch.setattr(trend, "earlier_rows", broken)
    text = night(rate=5.0, backend="broken-probe")  # the flow run still completes
    assert text.splitlines()[0] == "# Trend: adhoc-broken-probe" and len(_names(text)) == 1
