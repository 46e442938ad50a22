"""Neuron's rules, against the stand-in runtime (tests/stand_ins): cores belong to the process that first
runs a graph, workers pin one core each, neuron-ls names the holders, casting loosens parity."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving.contract import CLASS_NAMES, ModelInfo, claim_core, core_claims
from serving.handler import pin_neuron_core
from tasks import backends
from tasks.build.compile import parity
from tasks.build.trace import TraceError
from tasks.config import ChecksConfig, auto_cast_type
from tasks.measure import ceiling
from tasks.serve import cores

STAND_INS = Path(__file__).resolve().parent.parent / "stand_ins"
PAIRS = [("A cat sat on the mat.", "A cat was sitting on the mat."), ("How old are you?", "What is your age?")] * 4


@pytest.fixture
def neuron_host(monkeypatch, tmp_path):
    """The stand-in runtime and neuron-ls, with their own core reservations; children see them too."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.setenv("PYTHONPATH", str(STAND_INS))
    monkeypatch.setenv("PATH", f"{STAND_INS / 'bin'}:{Path(sys.executable).parent}")
    monkeypatch.setenv("TORCH_NEURONX_STAND_IN_CORES", str(tmp_path / "cores"))
    for key in [key for key in os.environ if key.startswith("NEURON_RT_")]:
        monkeypatch.delenv(key)
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("torch_neuronx", None)


def hold_core(core: int) -> subprocess.Popen:
    """Another process that ran a Neuron graph on `core` and is still running."""
    code = ("import torch_neuronx, sys; torch_neuronx.reserve(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "NEURON_RT_VISIBLE_CORES": str(core)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_core_held_by_a_live_process_is_refused_with_the_runtimes_error_and_freed_when_it_exits(neuron_host,
                                                                                                   monkeypatch):
    holder = hold_core(1)
    import torch_neuronx

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
    with pytest.raises(RuntimeError, match="NeuronCore\\(s\\) not available - Requested:nc1-nc1"):
        torch_neuronx.reserve()
    holder.stdin.close()
    holder.wait()
    assert torch_neuronx.reserve() == [1]


def test_neuron_ls_names_the_process_holding_a_core_and_start_refuses_naming_it(neuron_host):
    holder = hold_core(0)
    try:
        listing = backends.neuron_ls()
        assert [(p.pid, p.device) for p in listing.processes] == [(holder.pid, 0)]
        assert "torch_neuronx.reserve()" in listing.processes[0].command
        with pytest.raises(cores.CoresError, match=f"pid {holder.pid} \\(.*python"):
            cores.ensure_free(workers=1)
        assert holder.poll() is None  # named, never stopped: it is not ours
    finally:
        holder.stdin.close()
        holder.wait()


def test_neuron_ls_is_found_where_the_dlami_puts_it_and_answers_to_its_short_flag(neuron_host, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # not on PATH, as under a service
    monkeypatch.setattr(backends, "NEURON_LS_FALLBACK", STAND_INS / "bin" / "neuron-ls")
    monkeypatch.setenv("STAND_IN_NEURON_LS_NO_LONG_FLAG", "1")
    assert backends.neuron_core_count() == (2, "neuron-ls -j")


def test_a_worker_pins_a_core_of_its_own_whatever_neuron_rt_it_inherited(neuron_host, monkeypatch):
    claims = neuron_host / "claims"
    monkeypatch.setenv("BERT_NEURON_CORE_CLAIMS", str(claims))
    monkeypatch.setenv("BERT_NEURON_CORES", "2")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    monkeypatch.setenv("NEURON_RT_NUM_CORES", "2")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert claim_core(claims, 2, other.pid) == 0  # a live worker already holds core 0
        assert pin_neuron_core(gpu_id=None) == 1
        assert (os.environ["NEURON_RT_VISIBLE_CORES"], os.environ["NEURON_RT_NUM_CORES"]) == ("1", "1")
    finally:
        other.kill()
        other.wait()
    assert core_claims(claims) == {1: os.getpid()}  # a dead worker's core is free again


def test_compiler_args_decide_the_precision_and_so_the_parity_tolerance():
    checks = ChecksConfig()
    assert auto_cast_type("neuron", ["--auto-cast", "matmult", "--auto-cast-type", "bf16"]) == "bf16"
    assert auto_cast_type("neuron", ["--auto-cast=all", "--auto-cast-type=fp16"]) == "fp16"
    assert auto_cast_type("neuron", []) is None  # neuronx-cc >= 2.27 casts nothing by default
    assert auto_cast_type("cpu", ["--auto-cast", "matmult"]) is None
    assert checks.parity_tolerance_for("neuron", ["--auto-cast", "matmult"]) == checks.bf16_parity_tolerance
    assert checks.parity_tolerance_for("neuron", ["--auto-cast", "none"]) == checks.parity_tolerance


def test_parity_refuses_nan_and_a_flipped_label_even_within_tolerance():
    expected = torch.tensor([[-0.2, 0.2], [0.6, -0.6]])
    assert parity(expected, expected + 0.01, 0.05, 32) == pytest.approx(0.01)
    with pytest.raises(TraceError, match="NaN or Inf"):
        parity(expected, expected * float("nan"), 0.05, 32)
    with pytest.raises(TraceError, match="1 of 2 labels differ"):
        parity(expected, torch.tensor([[-0.2, 0.2], [-0.01, 0.01]]), 1.0, 32)


class Tiny(torch.nn.Module):
    def forward(self, ids_0, mask_0, ids_1, mask_1):
        score = (ids_0 * mask_0).float().mean(1) - (ids_1 * mask_1).float().mean(1)
        return torch.stack([-score, score], dim=-1)


@pytest.fixture
def neuron_model_dir(neuron_host, tokenizer, monkeypatch):
    """Tiny graphs compiled by the stand-in (in this test's process, on core 0 only)."""
    import torch_neuronx

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    model_dir = neuron_host / "model"
    model_dir.mkdir()
    example = (torch.ones(2, 16, dtype=torch.long),) * 4
    torch.jit.save(torch_neuronx.trace(Tiny(), example), str(model_dir / "model_16.pt"))
    tokenizer.save_pretrained(str(model_dir))
    ModelInfo(kind="bi-encoder", backend="neuron", batch_size=2, max_length=16, buckets=[16],
              model_files={16: "model_16.pt"}, class_names=list(CLASS_NAMES), source="test",
              parity_max_abs_diff=0.0).write(model_dir)
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES")
    return model_dir


def test_the_neuron_ceiling_runs_on_a_free_core_in_a_child_or_says_none_is_free(neuron_model_dir, monkeypatch):
    held = hold_core(1)  # a "worker" on the other core: none is free
    try:
        with pytest.raises(ceiling.CeilingUnavailable, match="no NeuronCore is free"):
            ceiling.measure(neuron_model_dir, PAIRS, workers=1, threads_per_worker=1, seconds=0.1)
        monkeypatch.setenv("STAND_IN_CORES_PER_DEVICE", "3")  # a spare core
        assert ceiling.measure(neuron_model_dir, PAIRS, workers=1, threads_per_worker=1, seconds=0.1).batches_per_s > 0
    finally:
        held.stdin.close()
        held.wait()
