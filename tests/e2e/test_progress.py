"""Inside a real flow run on a real Prefect server, a stage's progress artifact moves while the load
runs and ends at 100 %, saying what ran."""

import io
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
from prefect.context import get_run_context

from tasks.measure.loadgen import TrivialEndpoint, load
from tasks.common.progress import StageProgress

PAIRS = [(f"first sentence {i}", f"second sentence {i}") for i in range(10)]


def _progress_artifacts(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))


@task
def stage() -> dict:
    flow_run_id = get_run_context().task_run.flow_run_id
    with StageProgress("benchmark", {"client check": 1, "load": 3}, stream=io.StringIO()) as progress:
        assert progress.artifact  # inside a run: on without being asked
        progress.phase("client check")
        time.sleep(1.5)
        seen = [(a.data, a.description) for a in _progress_artifacts(flow_run_id)]
        progress.phase("load", "load: starting the clients")
        with TrivialEndpoint(delay=0.01) as endpoint:
            load(endpoint.url, {}, PAIRS, concurrency=2, duration=2.5, warmup=0.5, progress_every=0.2,
                 on_progress=progress.load("load"))
        time.sleep(1.5)  # the artifact's next update (at most one a second)
        later = [(a.data, a.description) for a in _progress_artifacts(flow_run_id)]
    return {"flow_run_id": flow_run_id, "early": seen, "late": later}


@flow
def staged() -> dict:
    return stage()


def test_the_progress_artifact_moves_and_ends_at_100(prefect_server):
    began = time.monotonic()
    result = staged()
    took = time.monotonic() - began
    # One artifact per stage, read twice while the stage was still open: it moved.
    (early,), (late,) = result["early"], result["late"]
    assert 0 < early[0] < 25 and "client check" in early[1]
    assert 50 < late[0] < 100 and "load done: " in late[1] and "requests/s" in late[1]
    (final,) = _progress_artifacts(result["flow_run_id"])
    assert final.type == "progress" and final.data == 100
    assert final.description.startswith("benchmark done in")
    assert took < 30
