"""The sweep end to end, on a real TorchServe and a real Prefect server: every setting measured, each
batch size's model dropped before the next one's (its workers gone), the compile cache of the pipeline's
trace stage reused, and the artifacts keyed like the pipeline's."""

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.sweep import sweep
from tasks.common.config import load_config
from tasks.prepare.trace import trace

pytestmark = pytest.mark.e2e


def _artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
        }


def test_a_sweep_measures_every_setting_reuses_compiled_models_and_keys_its_artifacts(prefect_server, tmp_path):
    overrides = {
        "runs_dir": str(tmp_path / "runs"),
        "serving.free_ports": True,
        "serving.max_length": 32,
        "build.compile_cache": True,
        "build.cache_dir": str(tmp_path / "cache"),
        "benchmark.duration": 1,
        "benchmark.capacity.enabled": False,
        # The rows' own loads are what is checked here; the ceiling beside a live server is test_pipeline's.
        # Without it a row's load follows its registration at once: a warm-up of 1 s takes the fresh
        # workers' first (slow) calls of the graph.
        "benchmark.ceiling_seconds": 0,
        "benchmark.client_check_seconds": 0,
        "benchmark.warmup": 1,
    }
    # Batch size 2 built before, as a pipeline run's trace stage builds it (the same function, the same config):
    # the sweep must find it in the cache and build only batch size 4.
    config = load_config(None, overrides)
    before = trace(config, "cpu", tmp_path / "pipeline-model", batch_size=2)
    assert before.cache["cache"] == "miss"

    state = sweep(
        overrides=overrides, batch_sizes=[2, 4], workers=[1], delays=[5, 20], concurrency=[2], return_state=True
    )
    second = state.result()
    assert {b: c["cache"] for b, c in second["compile_cache"].items()} == {2: "hit", 4: "miss"}
    rows = second["rows"]
    assert sorted(r["label"] for r in rows) == ["b2 w1 d20 c2", "b2 w1 d5 c2", "b4 w1 d20 c2", "b4 w1 d5 c2"]
    assert all(r["inferences_per_s"] > 0 and r["errors"] == 0 for r in rows), rows
    written = json.loads((Path(second["run_dir"]) / "sweep.json").read_text())
    assert written["rows"] == json.loads(json.dumps(rows)) and written["best"]["label"] in {r["label"] for r in rows}
    assert {"sweep-adhoc-cpu", "sweep-summary-adhoc-cpu"} <= _artifact_keys(state.state_details.flow_run_id)
