"""Bring your own, end to end: a second run reuses the compile cache; a traced graph (--traced) skips trace;
a tutorial-shaped .mar (--mar, a handler not ours) skips trace and archive -- each still registers, checks,
benchmarks and stops for real."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.pipeline import validate
from serving.contract import ModelInfo
from tasks.common.config import load_config
from tasks.prepare.trace import trace

pytestmark = pytest.mark.e2e
TUTORIAL_HANDLER = Path(__file__).parent / "tutorial_handler.py"
QUICK = {
    "serving.free_ports": True,
    "serving.initial_workers": 1,
    "serving.length_buckets": [],
    "benchmark.concurrency": 6,
    # A count of requests, not seconds: two full batches are measured however busy the host is (2 s measured
    # nothing once, when one batch took 2.9 s on a host busy with other work).
    "benchmark.requests": 12,
    "benchmark.warmup": 0,
    "benchmark.capacity.enabled": False,
    "benchmark.ceiling_seconds": 0.5,
    "benchmark.client_check_seconds": 0.2,
    "benchmark.single_client_seconds": 0.5,
    "benchmark.compare_buckets": False,
}


@pytest.fixture(scope="module")
def graph(default_model) -> Path:
    """The embedded model traced by this project at the tutorial's 6 x 128 (the session's, as the default config
    traces it: its model_128.pt is the tutorial's one graph). Read, never written."""
    return default_model.model_dir


@pytest.fixture(scope="module")
def tutorial_mar(graph, tmp_path_factory) -> Path:
    """A .mar in the tutorial's shape: its own handler, the graph, the tokenizer files, no model_info.json."""
    return _tutorial_archive(graph, TUTORIAL_HANDLER, "bert-tutorial", tmp_path_factory.mktemp("tutorial"))


def _tutorial_archive(graph: Path, handler: Path, name: str, out: Path) -> Path:
    """torch-model-archiver as the tutorial runs it: the graph, its handler, the tokenizer files."""
    info = ModelInfo.read(graph)
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    subprocess.run(
        [
            str(archiver),
            "--model-name",
            name,
            "--version",
            "1.0",
            "--serialized-file",
            str(graph / "model_128.pt"),
            "--handler",
            str(handler),
            "--extra-files",
            ",".join(str(graph / file) for file in info.tokenizer_files),
            "--export-path",
            str(out),
        ],
        check=True,
    )
    return out / f"{name}.mar"


def _run(tmp_path, **overrides) -> dict:
    validate(
        overrides={**QUICK, "runs_dir": str(tmp_path), **overrides},
        return_state=True,
    )
    # What a reader reads: the run's summary.json, whether it passed or failed.
    return json.loads((tmp_path / "latest" / "summary.json").read_text())


def _stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def _check(summary: dict, name: str) -> dict:
    return next(c for c in summary["checks"] if c["name"] == name)


def test_a_second_run_with_the_same_config_is_a_cache_hit_and_skips_the_trace(prefect_server, tmp_path):
    """The first night's trace is the trace stage's own function on the same config (what a cold run's trace stage
    runs and records in its summary, without serving the model a second time); the second night is a whole run."""
    small = {
        "serving.batch_size": 2,
        "serving.max_length": 32,
        "benchmark.enabled": False,
        "build.cache_dir": str(tmp_path / "cache"),
    }
    started = time.monotonic()
    cold = trace(load_config(None, {**QUICK, **small}), "cpu", tmp_path / "cold" / "model")
    cold_seconds = time.monotonic() - started
    warm = _run(tmp_path / "warm", **small)
    assert warm["status"] == "ok"
    assert cold.cache["cache"] == "miss" and warm["trace"]["cache"] == "hit"
    assert warm["trace"]["key"] == cold.cache["key"] and warm["trace"]["seconds_saved"] > 0
    assert _stage(warm, "trace")["seconds"] < cold_seconds


def test_a_traced_graph_brought_skips_trace_and_serves_with_our_handler(prefect_server, tmp_path, graph):
    summary = _run(tmp_path, **{"model.traced": str(graph / "model_128.pt")})
    assert summary["status"] == "ok", summary["stages"]
    trace_stage = _stage(summary, "trace")
    assert trace_stage["status"] == "skipped" and "--traced" in trace_stage["reason"]
    assert _stage(summary, "archive")["status"] == "ok"
    assert _check(summary, "parity with in-process model")["passed"]
    assert "not applicable" not in _check(summary, "parity with in-process model")["detail"]
    assert summary["benchmark"]["inferences_per_s"] > 0


def test_a_tutorial_mar_is_served_as_is_and_checked_by_its_answers(prefect_server, tmp_path, tutorial_mar):
    summary = _run(tmp_path, **{"model.mar": str(tutorial_mar)})
    assert summary["status"] == "ok", (summary["stages"], summary["checks"])
    for name in ("trace", "archive"):
        assert _stage(summary, name)["status"] == "skipped" and "--mar" in _stage(summary, name)["reason"]
    for name in ("start", "register", "check", "benchmark", "stop"):
        assert _stage(summary, name)["status"] == "ok"
    assert _check(summary, "tutorial pairs (full batch)")["detail"].startswith("6/6 labels right")
    assert _check(summary, "golden pairs")["passed"]
    parity = _check(summary, "parity with in-process model")
    assert parity["detail"].startswith("not applicable: the handler sends no probability")
    assert summary["benchmark"]["inferences_per_s"] > 0 and summary["benchmark"]["ceiling"] is None


def test_a_tutorial_mar_that_answers_wrong_fails_the_check(prefect_server, tmp_path, graph):
    """The answer text is what is judged: a tutorial handler with its labels swapped fails the run."""
    swapped = tmp_path / "swapped_handler.py"
    swapped.write_text(
        TUTORIAL_HANDLER.read_text().replace('["not paraphrase", "paraphrase"]', '["paraphrase", "not paraphrase"]')
    )
    mar = _tutorial_archive(graph, swapped, "bert-swapped", tmp_path)
    summary = _run(tmp_path / "runs", **{"model.mar": str(mar), "benchmark.enabled": False})
    assert summary["status"] == "failed"
    assert _stage(summary, "check")["status"] == "failed"
    assert not _check(summary, "tutorial pairs (full batch)")["passed"]
    assert _stage(summary, "stop")["status"] == "ok"
