"""The whole pipeline on backend=neuron, through the stand-in torch_neuronx and neuron-ls.

Real TorchServe, real workers, the real handler; only torch_neuronx and neuron-ls are stand-ins
(tests/stand_ins/README.md). This proves the calls the pipeline makes and the environment each
worker loads its model in -- not that Neuron compiles or runs BERT.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from flows.validate import validate
from tasks.build.archive import archive
from tasks.config import DEFAULT_CONFIG_FILE, ModelConfig, ResolvedServing, ServingConfig
from tasks.build.trace import trace
from tests.e2e.conftest import register_refusal

pytestmark = pytest.mark.e2e

STAND_INS = Path(__file__).resolve().parent.parent / "stand_ins"


@pytest.fixture
def neuron_host(monkeypatch, tmp_path):
    """This process and every TorchServe worker it starts see the stand-ins."""
    log = tmp_path / "torch_neuronx.log"
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(STAND_INS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PATH", f"{STAND_INS / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("TORCH_NEURONX_STAND_IN_LOG", str(log))
    monkeypatch.delenv("NEURON_RT_NUM_CORES", raising=False)
    importlib.invalidate_caches()
    yield log
    sys.modules.pop("torch_neuronx", None)


def test_the_pipeline_serves_on_neuron_one_core_per_worker(prefect_server, neuron_host, tmp_path):
    overrides = {"runs_dir": str(tmp_path / "runs"), "serving.backend": "neuron", "serving.free_ports": True,
                 "serving.batch_size": 2, "serving.max_length": 32, "benchmark.enabled": False}
    summary = validate(config_file=str(DEFAULT_CONFIG_FILE), overrides=overrides)

    assert summary["status"] == "ok", [s for s in summary["stages"] if s["error"]]
    resolved = summary["resolved"]
    assert resolved["backend"] == "neuron" and resolved["cores"] == 2
    assert resolved["cores_source"] == "neuron-ls --json-output" and resolved["initial_workers"] == 2
    assert "torch-neuronx" in resolved["versions"]
    run_dir = tmp_path / "runs" / "latest"
    assert json.loads((run_dir / "model" / "model_info.json").read_text())["backend"] == "neuron"

    events = [json.loads(line) for line in neuron_host.read_text().splitlines()]
    traces = [e for e in events if e["event"] == "trace"]
    assert len(traces) == 1 and traces[0]["pid"] == os.getpid()
    assert traces[0]["shapes"] == [[2, 32]] * 4  # ids and masks of both sentences, batch 2 x 32 tokens
    workers = {e["pid"]: e for e in events if e["event"] == "import" and e["pid"] != os.getpid()}
    assert len(workers) == 2  # one process per NeuronCore
    assert all(e["NEURON_RT_NUM_CORES"] == "1" for e in workers.values())
    model_log = (run_dir / "server" / "logs" / "model_log.log").read_text()
    assert model_log.count("(bi-encoder, neuron on cpu)") == 2


def test_a_model_traced_for_cpu_is_refused_by_a_neuron_server(neuron_host, tmp_path):
    traced = trace(ModelConfig(threshold=0.6821), 2, 32, [], tmp_path / "model", backend="cpu")
    mar = archive(traced, tmp_path / "model_store")
    serving = ServingConfig(batch_size=2, max_length=32, free_ports=True, backend="neuron")
    resolved = ResolvedServing(backend="neuron", device_name="2 NeuronCores", cores=2,
                               cores_source="neuron-ls --json-output", initial_workers=1, threads_per_worker=1)
    error = register_refusal(serving, resolved, mar, tmp_path / "server")
    assert "traced for backend 'cpu' but the server runs the 'neuron' backend" in str(error)
