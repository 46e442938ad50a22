"""Length buckets through the real pipeline: one graph per bucket in the .mar, batches routed by
length, the same answers as the single max_length graph, and the comparison reported per run."""

import json

import pytest

from flows.pipeline import validate
from tasks.common.config import DEFAULT_CONFIG_FILE

pytestmark = pytest.mark.e2e


def test_buckets_serve_the_same_labels_as_max_length_only_and_are_compared_in_the_run(prefect_server, tmp_path):
    overrides = {
        "runs_dir": str(tmp_path),
        "serving.free_ports": True,
        "serving.batch_size": 2,
        "serving.max_length": 64,
        "serving.length_buckets": [16, 32],
        "serving.initial_workers": 1,
        "benchmark.concurrency": 4,
        "benchmark.duration": 2,
        "benchmark.warmup": 0,
        "benchmark.capacity.enabled": False,
        "benchmark.ceiling_seconds": 0,
        "benchmark.client_check_seconds": 0,
        "benchmark.single_client_seconds": 0,
        "benchmark.regression_runs": 0,
        # Both registrations measured, labels compared on the same sample: 2 s of load each (not the default 8).
        "benchmark.compare_seconds": 2,
    }
    summary = validate(config_file=str(DEFAULT_CONFIG_FILE), overrides=overrides)
    assert summary["status"] == "ok", [s for s in summary["stages"] if s["error"]]

    info = json.loads((tmp_path / "latest" / "model" / "model_info.json").read_text())
    assert info["buckets"] == [16, 32, 64] and set(info["model_files"]) == {"16", "32", "64"}
    parity = next(c for c in summary["checks"] if c["name"] == "parity with in-process model")
    assert parity["passed"] and parity["metrics"]["label_mismatches"] == 0  # bucketed vs max_length in-process

    comparison = summary["bucket_comparison"]
    assert comparison["buckets"] == [16, 32, 64] and comparison["max_length"] == 64
    assert comparison["labels_compared"] > 0
    assert comparison["labels_identical"] == comparison["labels_compared"]
    assert comparison["bucketed_inferences_per_s"] > 0 and comparison["single_inferences_per_s"] > 0
    model_log = (tmp_path / "latest" / "server" / "logs" / "model_log.log").read_text()
    assert "loaded buckets [16, 32, 64]" in model_log and "loaded buckets [64]" in model_log
