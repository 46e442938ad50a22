"""The whole pipeline on backend=neuron, through the stand-in torch_neuronx runtime and neuron-ls.

Real TorchServe, real workers, the real handler -- and real Ray Serve replicas, where the extra [ray] is
installed; only torch_neuronx and neuron-ls are stand-ins
(tests/stand_ins/README.md). The stand-in runtime keeps Neuron's rule that a process owns the cores
of its first graph until it exits, so these prove who touches the cores and when, each worker's core,
and that parity holds BF16 graphs to a tolerance that still catches a broken compile -- not that Neuron
compiles or runs BERT.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.pipeline import validate
from serving.contract import CLASS_NAMES, ModelInfo
from tasks.common import tools
from tasks.common.config import REPO_ROOT, ChecksConfig, ServingConfig, load_config
from tasks.common.processes import ProcessRef
from tasks.common.sizing import ResolvedServing
from tasks.prepare.archive import archive
from tasks.prepare.trace import TraceError, trace
from tasks.serve import placement
from tasks.serve.clients import Inference
from tasks.serve.register import wait_replaced
from tasks.serve.server import load_record, record, stop
from tasks.verify.pairs import load_golden
from tests.e2e.conftest import assert_server_gone, register_refusal

pytestmark = pytest.mark.e2e

GOLDEN_PAIRS = REPO_ROOT / "configs" / "golden_pairs.yaml"
OVERRIDES = {
    "serving.backend": "neuron",
    "serving.free_ports": True,
    "serving.batch_size": 2,
    "serving.max_length": 32,
    "benchmark.enabled": False,
    # Every run here compiles in its child process (the stand-in's log is read), never from the cache.
    "build.compile_cache": False,
}
SHORT_BENCHMARK = {
    "benchmark.enabled": True,
    "benchmark.capacity.enabled": False,
    "benchmark.duration": 3,
    "benchmark.warmup": 0.5,
    "benchmark.concurrency": 4,
    "benchmark.ceiling_seconds": 1,
    "benchmark.client_check_seconds": 0,
    "benchmark.single_client_seconds": 0,
    "benchmark.regression_runs": 0,
    # compare-buckets too: buckets 16 and 32 against 32 alone, 2 s of load each.
    "serving.length_buckets": [16],
    "benchmark.compare_seconds": 2,
}


# TorchServe, then Ray Serve on the same cores where Ray is installed: its replicas take them through Ray's
# `neuron_cores` once TorchServe's workers have let them go.
RAY = importlib.util.find_spec("ray") is not None
ENGINES = ["torchserve", "ray"] if RAY else ["torchserve"]


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_pipeline_serves_on_neuron_with_each_worker_on_its_own_core_despite_an_inherited_core(
    prefect_server, neuron_host, tmp_path, monkeypatch
):
    """A night on two NeuronCores, its bucket comparison included, then (where Ray is installed) the same night on
    Ray Serve. Each core is held by one worker process until it exits, so compare-buckets must have the bucketed
    registration's two workers let go of both cores before the max_length-only registration's two can load, and
    must serve the bucketed model again afterwards; then Ray's two replicas, asking `neuron_cores: 1` each, get a
    core each from Ray once TorchServe's workers have let them go -- one owner per core throughout."""
    # Inherited by the flow: it would put every worker on core 0 if the server passed it through.
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    summary = validate(
        overrides={"runs_dir": str(tmp_path / "runs"), **OVERRIDES, **SHORT_BENCHMARK, "serving.engines": ENGINES},
    )

    assert summary["status"] == "ok", [s for s in summary["stages"] if s["error"]]
    assert (summary["resolved"]["cores"], summary["resolved"]["initial_workers"]) == (2, 2)
    # Both cores serve, so the ceiling has none: said, with why, and the benchmark measured all the same.
    bench = summary["benchmark"]
    assert bench["requests"] > 0 and bench["errors"] == 0
    assert "no NeuronCore is free: all 2 are held" in bench["ceiling"]["unavailable"]
    assert bench["served_over_ceiling"] is None
    assert summary["model"]["compiler_args"] == ["--auto-cast", "matmult", "--auto-cast-type", "bf16"]
    assert summary["model"]["parity_tolerance"] == ChecksConfig().bf16_parity_tolerance
    written = json.loads((tmp_path / "runs" / "latest" / "summary.json").read_text())  # what a reader sees
    assert written["core_map"] == json.loads(json.dumps(summary["core_map"]))
    core_map = written["core_map"]["cores"]
    assert sorted(core_map) == ["0", "1"] and len(set(core_map.values())) == 2
    assert "neuron-ls --json-output" in summary["core_map"]["checked_with"]

    log = events(neuron_host)
    assert [e for e in log if e["pid"] == os.getpid()] == []  # the flow's own process never touched Neuron
    # Under a service's PATH the compile child ran the compiler pip installed beside its interpreter.
    compiles = [e for e in log if e["event"] == "neuronx-cc"]
    assert [e["path"] for e in compiles] == [str(tools.environment_bin() / "neuronx-cc")] * 2  # a graph per bucket
    traces = [e for e in log if e["event"] == "trace"]
    assert [t["shapes"] for t in traces] == [[[2, 16]] * 4, [[2, 32]] * 4]  # each of the four inputs, per bucket
    assert {t["precision"] for t in traces} == {"bf16"} and len({t["pid"] for t in traces}) == 1  # one child
    reserves = [(e["pid"], e["cores"]) for e in log if e["event"] == "reserve" and e["pid"] != traces[0]["pid"]]
    # bucketed workers, then the single-bucket ones on the same two cores, then the bucketed ones again; then Ray's
    # replicas on the same two
    served = 4 if RAY else 3
    assert [sorted(c for _, cs in reserves[i : i + 2] for c in cs) for i in range(0, 2 * served, 2)] == [
        [0, 1]
    ] * served
    assert (
        len(reserves) == 2 * served and len({pid for pid, _ in reserves}) == 2 * served
    )  # a process per core each time
    assert {int(pid) for pid in core_map.values()} == {pid for pid, _ in reserves[:2]}  # mapped once registered
    if RAY:
        ray = summary["side_by_side"]["engines"][1]
        assert ray["engine"] == "ray" and ray["status"] == "ok" and ray["checks_passed"] == ray["checks"]
        replicas = {int(core): pid for core, pid in ray["core_map"]["cores"].items()}
        assert sorted(replicas) == [0, 1] and set(replicas.values()) == {pid for pid, _ in reserves[6:]}
        assert "neuron-ls --json-output" in ray["core_map"]["checked_with"]
        assert ray["benchmark"]["requests"] > 0 and ray["benchmark"]["errors"] == 0
        assert "no NeuronCore is free" in ray["benchmark"]["ceiling"]["unavailable"]  # the replicas hold both
    info = json.loads((tmp_path / "runs" / "latest" / "model" / "model_info.json").read_text())
    assert info["compiler_args"] == summary["model"]["compiler_args"]

    buckets = summary["bucket_comparison"]
    assert buckets["buckets"] == [16, 32]
    assert buckets["bucketed_inferences_per_s"] > 0 and buckets["single_inferences_per_s"] > 0
    assert buckets["labels_identical"] == buckets["labels_compared"] > 0


def test_a_process_holding_a_core_stops_the_run_before_trace_named_and_untouched(prefect_server, neuron_host, tmp_path):
    """Before any work: on Neuron a compile takes minutes, and the workers could not load anyway."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import torch_neuronx, sys; torch_neuronx.reserve(); print('held', flush=True); sys.stdin.read()",
        ],
        env=tools.with_environment_bin({**os.environ, "NEURON_RT_VISIBLE_CORES": "1"}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"stage trace failed.*pid {holder.pid}"):
            validate(overrides={"runs_dir": str(tmp_path / "runs"), **OVERRIDES})
        assert holder.poll() is None  # not ours: named, never stopped
        assert [e for e in events(neuron_host) if e["event"] == "trace"] == []  # nothing compiled
        run_dir = tmp_path / "runs" / "latest"
        assert not (run_dir / "server" / "server.json").exists()  # TorchServe was never started
        assert not [
            p for p in psutil.process_iter(["cmdline"]) if str(run_dir.resolve()) in " ".join(p.info["cmdline"] or [])
        ]
    finally:
        holder.stdin.close()
        holder.wait()


@pytest.mark.parametrize("fault", ["drop-attention-mask", "swap-inputs", "nan"])
def test_a_broken_bf16_compile_fails_parity(neuron_host, tmp_path, monkeypatch, fault):
    monkeypatch.setenv("TORCH_NEURONX_STAND_IN_FAULT", fault)
    config = load_config(None, {"serving.batch_size": 2, "serving.max_length": 32})
    tolerance = config.checks.parity_tolerance_for("neuron", config.model.compiler_args)
    assert tolerance == ChecksConfig().bf16_parity_tolerance  # the default compiler arguments cast to BF16
    with pytest.raises(TraceError, match="differ|NaN"):
        trace(config, "neuron", tmp_path / "model", use_cache=False)  # compiled, not a good build from the cache
    assert not (tmp_path / "model" / "model_info.json").exists()


def test_a_model_traced_for_cpu_is_refused_by_a_neuron_server(small_model, neuron_host, tmp_path):
    mar = archive(small_model, tmp_path / "model_store")  # the session's small model, traced for cpu
    serving = ServingConfig(batch_size=2, max_length=32, free_ports=True, backend="neuron")
    resolved = ResolvedServing(
        backend="neuron",
        device_name="2 NeuronCores",
        cores=2,
        cores_source="neuron-ls --json-output",
        initial_workers=1,
        threads_per_worker=1,
    )
    error = register_refusal(serving, resolved, mar, tmp_path / "server")
    assert "traced for backend 'cpu' but the server runs the 'neuron' backend" in str(error)


def test_a_worker_killed_mid_night_is_replaced_on_the_core_it_freed_and_answers(
    prefect_server, neuron_host, tmp_path, monkeypatch
):
    """kill -9 of a READY worker: TorchServe starts a replacement at once, while the driver still holds the dead
    worker's core for a moment (the stand-in's release delay); the replacement claims that core, the runtime
    refuses it and the refusal ends the replacement (c10::Error, SIGABRT: huggingface/optimum-neuron#377, Inf2),
    so no retry in the worker can help: TorchServe starts another, which loads once the core is released and
    serves -- one worker per core throughout. (A refusal torch-neuronx raises instead is retried in the worker:
    tests/unit/test_neuron.py.)"""
    monkeypatch.setenv("STAND_IN_CORE_RELEASE_S", "2")
    monkeypatch.setenv("STAND_IN_NEURON_REFUSAL", "abort")
    summary = validate(
        overrides={"runs_dir": str(tmp_path / "runs"), **OVERRIDES, "build.compile_cache": True, "keep_serving": True},
    )
    assert summary["status"] == "ok", [s for s in summary["stages"] if s["error"]]
    server = load_record(tmp_path / "runs" / "latest" / "server")
    model_name = ModelInfo.read(tmp_path / "runs" / "latest" / "model").model_name
    try:
        before = placement.core_map(server, model_name, workers=2).cores
        core, dead = sorted(before.items())[0]
        os.kill(dead, signal.SIGKILL)
        wait_replaced(server, model_name, dead, workers=2, timeout=60)
        after = placement.core_map(server, model_name, workers=2).cores  # distinct cores, confirmed by neuron-ls
        assert after[core] != dead and after[1 - core] == before[1 - core]
        refused = [e for e in events(neuron_host) if e["event"] == "reserve-failed" and e["requested"] == [core]]
        assert refused, "the replacement never met the dead worker's unreleased core: the test proved nothing"
        assert {e["refusal"] for e in refused} == {"abort"}  # each refused replacement died of it
        inference = Inference(server, model_name, list(CLASS_NAMES))
        try:
            answers = [inference.send(*pair) for pair in load_golden(GOLDEN_PAIRS)[:4]]
        finally:
            inference.close()
        assert all(answer.correct for answer in answers), answers
    finally:
        stop(server)
    assert_server_gone(server)


def test_a_crashed_nights_server_holding_every_core_is_stopped_before_tonights_trace(
    prefect_server, neuron_host, tmp_path
):
    """A night whose process died (its record names an owner that is gone) left TorchServe with a worker on each
    core. Tonight's compile child needs a core: the stale server must be stopped in the trace stage, before it."""
    import neuron_runtime_stand_in

    runs = {"runs_dir": str(tmp_path / "runs")}
    last_night = validate(
        overrides={**runs, **OVERRIDES, "build.compile_cache": True, "keep_serving": True},
    )
    assert last_night["status"] == "ok", [s for s in last_night["stages"] if s["error"]]
    stale = load_record(Path(last_night["run_dir"]) / "server")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale.owner = ProcessRef(pid=gone.pid, create_time=0.0)  # the night's process, dead: the server is stale
    stale.kept = False  # left by a crash, not kept on purpose (a kept one refuses the night: test_server_config.py)
    record(stale)
    assert sorted(neuron_runtime_stand_in.owners()) == [0, 1]  # both cores held by its workers
    tonight_began = time.time()

    try:
        tonight = validate(overrides={**runs, **OVERRIDES})
        left = [ref.pid for ref in stale.processes if ref.alive()]
    finally:
        stop(stale)  # nothing to do when tonight stopped it; the test's cleanup when it did not

    assert tonight["status"] == "ok", [s for s in tonight["stages"] if s["error"]]
    assert left == []  # tonight stopped it
    tonight_events = [e for e in events(neuron_host) if e["time"] >= tonight_began]
    traced = [e for e in tonight_events if e["event"] == "trace"]
    assert len(traced) == 1  # compiled tonight, in a child that got its core at the first try
    assert [e for e in tonight_events if e["event"] == "reserve-failed" and e["pid"] == traced[0]["pid"]] == []
