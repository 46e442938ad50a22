"""Inside a real flow run on a real Prefect server, a stage's progress artifact moves while the load
runs and ends at 100 %, saying what ran."""

import io

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
from prefect.context import get_run_context

from tasks.common.polling import Pending, wait_until
from tasks.common.progress import StageProgress
from tasks.measure.loadgen import Load, Watch, load
from tasks.measure.trivial_endpoint import TrivialEndpoint

pytestmark = pytest.mark.e2e  # a real Prefect server, real time: not the fast tier

PAIRS = [(f"first sentence {i}", f"second sentence {i}") for i in range(10)]


def _progress_artifacts(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])
            )
        )


def _read_once(flow_run_id, updated) -> list[tuple]:
    """The run's progress artifacts as (data, description), read again until one shows `updated(data, description)`:
    the artifact is updated at most once a second, from a thread of its own."""

    def check():
        found = [(a.data, a.description) for a in _progress_artifacts(flow_run_id)]
        return found if any(updated(*artifact) for artifact in found) else Pending(repr(found))

    return wait_until(check, 30, "the progress artifact's update", first=0.1, most=0.5)


@task
def stage() -> dict:
    flow_run_id = get_run_context().task_run.flow_run_id
    with StageProgress("benchmark", {"client check": 1, "load": 3}, stream=io.StringIO()) as progress:
        assert progress.artifact  # inside a run: on without being asked
        progress.phase("client check")
        seen = _read_once(flow_run_id, lambda data, description: data > 0)  # moved with the clock
        progress.phase("load", "load: starting the clients")
        with TrivialEndpoint(delay=0.01) as endpoint:
            load(
                endpoint.url,
                {},
                PAIRS,
                Load(concurrency=2, duration=2.5, warmup=0.5),
                Watch(progress_every=0.2, on_progress=progress.load("load")),
            )
        later = _read_once(flow_run_id, lambda data, description: "load done: " in description)
    return {"flow_run_id": flow_run_id, "early": seen, "late": later}


@flow
def staged() -> dict:
    return stage()


def test_the_progress_artifact_moves_and_ends_at_100(prefect_server):
    result = staged()
    # One artifact per stage, read twice while the stage was still open: it moved.
    (early,), (late,) = result["early"], result["late"]
    assert 0 < early[0] < 25 and "client check" in early[1]
    assert 50 < late[0] < 100 and "load done: " in late[1] and "requests/s" in late[1]
    (final,) = _progress_artifacts(result["flow_run_id"])
    assert final.type == "progress" and final.data == 100
    assert final.description.startswith("benchmark done in")
