"""Backend choice and NeuronCore counting: the tutorial's table, neuron-ls, and the refusals."""

import json
import sys

import pytest
import torch

from serving.contract import BACKEND_ENV
from serving.model import prepare_backend
from tasks.common import backends
from tasks.common.config import ConfigError, ServingConfig
from tasks.common.sizing import resolve_serving
from tasks.prepare.compile import compile_for
from tests.stand_ins import host

STAND_INS = backends.NEURON_CORES_FILE.parent.parent / "tests" / "stand_ins"

# The tutorial's table (plus trn1n.32xlarge): the spec the code must follow.
TUTORIAL_CORES = {
    "inf2.xlarge": 2,
    "inf2.8xlarge": 2,
    "inf2.24xlarge": 12,
    "inf2.48xlarge": 24,
    "trn1.2xlarge": 2,
    "trn1.32xlarge": 32,
    "trn1n.32xlarge": 32,
}


@pytest.fixture
def no_neuron_ls(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(backends.INSTANCE_TYPE_ENV, raising=False)


@pytest.mark.parametrize("instance_type, cores", sorted(TUTORIAL_CORES.items()))
def test_every_instance_size_maps_to_its_neuroncores(no_neuron_ls, instance_type, cores):
    count, source = backends.neuron_core_count(instance_type)
    assert count == cores
    assert instance_type in source


def test_the_instance_type_can_come_from_the_environment(no_neuron_ls, monkeypatch):
    monkeypatch.setenv(backends.INSTANCE_TYPE_ENV, "inf2.24xlarge")
    assert backends.neuron_core_count() == (12, "instance type inf2.24xlarge (neuron_cores.yaml)")


def test_an_unknown_or_missing_instance_type_is_refused_with_the_choices(no_neuron_ls):
    with pytest.raises(backends.BackendError, match="inf2.xlarge"):
        backends.neuron_core_count("p4d.24xlarge")
    with pytest.raises(backends.BackendError, match="serving.instance_type"):
        backends.neuron_core_count(None)


def test_neuron_ls_wins_over_the_instance_type(neuron_host, monkeypatch):
    monkeypatch.setenv("STAND_IN_NEURON_DEVICES", "3")
    assert backends.neuron_core_count("inf2.xlarge") == (6, "neuron-ls --json-output")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: auto picks cuda")
def test_auto_picks_cpu_on_a_host_without_neuron_or_gpu(no_neuron_ls):
    accelerator = backends.detect("auto")
    assert accelerator.backend == "cpu"
    assert accelerator.cores_source == "psutil.cpu_count(logical=False)"


def test_cpu_serves_one_worker_per_physical_core_not_per_hyperthread(monkeypatch):
    # A 4-core host with 2 hyperthreads per core.
    monkeypatch.setattr(backends.psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    resolved = resolve_serving(ServingConfig(backend="cpu"))
    assert (resolved.cores, resolved.initial_workers, resolved.threads_per_worker) == (4, 4, 1)
    assert resolve_serving(ServingConfig(backend="cpu", initial_workers=2)).threads_per_worker == 2
    with pytest.raises(ConfigError, match="4 physical CPU cores"):
        resolve_serving(ServingConfig(backend="cpu", initial_workers=8))


def test_a_backend_refusal_reads_as_the_cause_then_the_fix(no_neuron_ls):
    with pytest.raises(backends.BackendError) as caught:
        backends.neuron_core_count("p4d.24xlarge")
    cause, fix = str(caught.value).split("\nfix: ")
    assert "p4d.24xlarge" in cause and fix.startswith("use one of inf2.xlarge")


def test_auto_picks_neuron_when_torch_neuronx_imports_and_a_core_is_visible(neuron_host):
    accelerator = backends.detect("auto")
    assert accelerator.backend == "neuron" and accelerator.cores == 2
    assert accelerator.versions == {"torch-neuronx": "present (no package metadata)", "neuronx-cc": "not installed"}


def test_workers_default_to_neuroncores_and_more_are_refused_early(neuron_host):
    resolved = resolve_serving(ServingConfig(backend="neuron"))
    assert (resolved.backend, resolved.initial_workers, resolved.cores_source) == (
        "neuron",
        2,
        "neuron-ls --json-output",
    )
    assert resolved.threads_per_worker >= 1
    with pytest.raises(ConfigError) as caught:
        resolve_serving(ServingConfig(backend="neuron", initial_workers=3))
    assert "2 NeuronCores (from neuron-ls --json-output)" in str(caught.value)


def test_a_backend_that_is_not_there_is_refused_before_anything_starts(no_neuron_ls):
    with pytest.raises(ConfigError, match="torch_neuronx is not installed"):
        resolve_serving(ServingConfig(backend="neuron"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_serving(ServingConfig(backend="cuda"))


def test_neuron_compilation_goes_through_torch_neuronx_trace(neuron_host, monkeypatch):
    host.as_the_pipeline_starts_it(monkeypatch)  # as the compile child has it
    module = torch.nn.Linear(4, 2)
    inputs = (torch.ones(3, 4),)
    traced, moved = compile_for("neuron", module, inputs, ["--auto-cast", "none"])
    assert torch.allclose(traced(*moved), module(*inputs))
    events = [json.loads(line) for line in neuron_host.read_text().splitlines()]
    assert [e["shapes"] for e in events if e["event"] == "trace"] == [[[3, 4]]]


def test_the_handler_refuses_a_model_traced_for_another_backend(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "cpu")
    with pytest.raises(RuntimeError, match="traced for backend 'neuron' but the server runs the 'cpu' backend"):
        prepare_backend("neuron", None)


def test_the_handler_needs_torch_neuronx_for_a_neuron_model(monkeypatch, no_neuron_ls):
    monkeypatch.setenv(BACKEND_ENV, "neuron")
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)  # import fails
    with pytest.raises(RuntimeError, match="torch_neuronx is not installed"):
        prepare_backend("neuron", None)


def test_a_neuron_worker_takes_one_core_before_torch_neuronx_loads(neuron_host, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "neuron")
    monkeypatch.delenv("NEURON_RT_NUM_CORES", raising=False)
    host.as_the_pipeline_starts_it(monkeypatch)  # as TorchServe starts its workers
    sys.modules.pop("torch_neuronx", None)
    assert prepare_backend("neuron", None) == torch.device("cpu")
    imports = [json.loads(line) for line in neuron_host.read_text().splitlines()]
    assert imports[-1]["event"] == "import" and imports[-1]["NEURON_RT_NUM_CORES"] == "1"
