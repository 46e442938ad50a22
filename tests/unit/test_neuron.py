"""Neuron's rules, against the stand-in runtime (tests/stand_ins): cores belong to the process that first
runs a graph, workers pin one core each, neuron-ls names the holders, casting loosens parity."""

import os
import subprocess
import sys
import time

import pytest
import torch

from serving.claims import claim_core, core_claims, gpu_claims, record_gpu
from serving.contract import CLASS_NAMES, ModelInfo
from serving.handler import pin_neuron_core, prepare_backend
from tasks.common import backends, tools
from tasks.prepare.compile import parity
from tasks.prepare.trace import TraceError
from tasks.common.config import ChecksConfig, ResolvedServing, auto_cast_type
from tasks.measure import ceiling
from tasks.serve import cores
from tests.stand_ins import host

PAIRS = [("A cat sat on the mat.", "A cat was sitting on the mat."), ("How old are you?", "What is your age?")] * 4


def hold_core(core: int) -> subprocess.Popen:
    """Another process that ran a Neuron graph on `core` and is still running."""
    code = ("import torch_neuronx, sys; torch_neuronx.reserve(); print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "NEURON_RT_VISIBLE_CORES": str(core)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_held_core_is_refused_with_torch_neuronxs_text_and_freed_a_moment_after_its_owner_exits(
        neuron_host, monkeypatch, capfd):
    monkeypatch.setenv("STAND_IN_CORE_RELEASE_S", "0.5")
    holder = hold_core(1)
    import torch_neuronx

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
    with pytest.raises(RuntimeError, match="The PyTorch Neuron Runtime could not be initialized"):
        torch_neuronx.reserve()
    assert "NRT:nrt_allocate_neuron_cores NeuronCore(s) not available - Requested:nc1-nc1" in capfd.readouterr().err
    holder.stdin.close()
    holder.wait()
    with pytest.raises(RuntimeError, match="could not be initialized"):
        torch_neuronx.reserve()  # the owner is gone, its core not yet released
    assert wait_for(lambda: _reserves(torch_neuronx)) == [1]


def _reserves(torch_neuronx) -> list[int] | None:
    try:
        return torch_neuronx.reserve()
    except RuntimeError:
        return None


def wait_for(condition, seconds: float = 20.0):
    """condition()'s first truthy value, asked every 0.1 s for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


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


def test_neuron_ls_and_neuron_monitor_are_found_where_the_dlami_puts_them_off_a_service_path(neuron_host,
                                                                                              monkeypatch):
    assert os.environ["PATH"] == host.SERVICE_PATH  # neither the environment's bin nor Neuron's tools
    monkeypatch.setenv("STAND_IN_NEURON_LS_NO_LONG_FLAG", "1")
    assert backends.neuron_core_count() == (2, "neuron-ls -j")
    assert tools.neuron_tool("neuron-monitor") == str(host.STAND_INS / "bin" / "neuron-monitor")


def test_a_child_finds_the_environments_tools_first_on_a_service_path(neuron_host):
    path = tools.with_environment_bin({"PATH": host.SERVICE_PATH})["PATH"].split(os.pathsep)
    assert path[0] == str(tools.environment_bin()) and path[1:] == host.SERVICE_PATH.split(os.pathsep)
    assert tools.with_environment_bin({"PATH": os.pathsep.join(path)})["PATH"].split(os.pathsep) == path  # once
    found = subprocess.run([sys.executable, "-c", "import shutil; print(shutil.which('neuronx-cc'))"],
                           env=tools.with_environment_bin(dict(os.environ)), capture_output=True, text=True)
    assert found.stdout.strip() == str(tools.environment_bin() / "neuronx-cc")


def test_a_worker_pins_a_core_of_its_own_whatever_neuron_rt_it_inherited(neuron_host, monkeypatch):
    claims = neuron_host.parent / "claims"
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
    monkeypatch.setenv("PATH", tools.with_environment_bin(dict(os.environ))["PATH"])  # as the compile child has it
    model_dir = neuron_host.parent / "model"
    model_dir.mkdir()
    example = (torch.ones(2, 16, dtype=torch.long),) * 4
    torch.jit.save(torch_neuronx.trace(Tiny(), example), str(model_dir / "model_16.pt"))
    tokenizer.save_pretrained(str(model_dir))
    ModelInfo(kind="bi-encoder", backend="neuron", batch_size=2, max_length=16, buckets=[16],
              model_files={16: "model_16.pt"}, class_names=list(CLASS_NAMES), source="test",
              parity_max_abs_diff=0.0).write(model_dir)
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES")
    return model_dir


def test_the_ceiling_takes_a_core_no_process_holds_or_is_unavailable_saying_why(neuron_model_dir, tmp_path,
                                                                                 monkeypatch):
    server_dir = tmp_path / "server"
    assert claim_core(cores.claims_dir(server_dir), 2, os.getpid()) == 0  # this process compiled on core 0: a worker
    held = hold_core(1)  # a process that is not ours, on the same device
    try:
        resolved = ResolvedServing(backend="neuron", device_name="2 NeuronCores", cores=2, cores_source="neuron-ls",
                                   initial_workers=1, threads_per_worker=1)
        with pytest.raises(ceiling.CeilingUnavailable,
                           match=f"no NeuronCore is free.*worker pid {os.getpid()}.*pid {held.pid}"):
            ceiling.measure_beside(server_dir, resolved, neuron_model_dir, PAIRS, seconds=0.1)
        # The runtime refusing the core it was given (whatever neuron-ls said) is the same verdict, with its words.
        with pytest.raises(ceiling.CeilingUnavailable, match="did not load on NeuronCore 1.*could not be initialized"):
            ceiling.measure(neuron_model_dir, PAIRS, workers=1, threads_per_worker=1, seconds=0.1, neuron_core=1)
        monkeypatch.setenv("STAND_IN_NEURON_DEVICES", "2")  # a second device, no process on it
        four = resolved.model_copy(update={"cores": 4})
        assert ceiling.measure_beside(server_dir, four, neuron_model_dir, PAIRS, seconds=0.1).batches_per_s > 0
    finally:
        held.stdin.close()
        held.wait()


def test_a_starting_worker_waits_for_the_core_a_dying_worker_still_claims(tmp_path):
    claims = tmp_path / "claims"
    staying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dying = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    another = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert (claim_core(claims, 2, staying.pid), claim_core(claims, 2, dying.pid)) == (0, 1)
        assert claim_core(claims, 2, os.getpid(), wait_s=30) == 1  # once the dying worker has exited
        with pytest.raises(RuntimeError, match="none was freed within 0.3 s"):
            claim_core(claims, 2, another.pid, wait_s=0.3)
    finally:
        for process in (staying, dying, another):
            process.kill()
            process.wait()


LOAD = ("import sys, torch, torch_neuronx; from pathlib import Path; from serving.contract import ModelInfo; "
        "from serving.handler import load_graphs; d = Path(sys.argv[1]); info = ModelInfo.read(d); "
        "print(sorted(load_graphs(d, info, info.buckets, torch.device('cpu'), wait_s=float(sys.argv[2]))))")


def test_a_worker_loads_once_the_runtime_releases_its_core_and_gives_up_past_its_bound(neuron_model_dir,
                                                                                       monkeypatch):
    monkeypatch.setenv("STAND_IN_CORE_RELEASE_S", "0.5")
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
    held = hold_core(1)
    try:
        refused = subprocess.run([sys.executable, "-c", LOAD, str(neuron_model_dir), "0.5"], capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode != 0 and "could not be initialized" in refused.stderr
        loader = subprocess.Popen([sys.executable, "-c", LOAD, str(neuron_model_dir), "30"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    finally:
        held.stdin.close()
        held.wait()
    out, err = loader.communicate(timeout=120)
    assert loader.returncode == 0, err
    assert out.strip() == "[16]" and "NeuronCore 1 refused" in err  # the dead owner's core, once released


def test_cuda_workers_record_the_gpu_torchserve_gave_them_and_a_dead_workers_record_is_dropped(tmp_path,
                                                                                               monkeypatch):
    """prepare_backend as a cuda worker runs it (torch's view of a GPU faked: none here); gpu_claims is what the
    summary's gpu_map reads."""
    claims = tmp_path / "claims"
    monkeypatch.setenv("BERT_BACKEND", "cuda")
    monkeypatch.setenv("BERT_NEURON_CORE_CLAIMS", str(claims))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prepare_backend("cuda", 1) == torch.device("cuda:1")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record_gpu(claims, other.pid, 1)
        assert gpu_claims(claims) == {os.getpid(): 1, other.pid: 1}  # two workers share GPU 1
    finally:
        other.kill()
        other.wait()
    assert gpu_claims(claims) == {os.getpid(): 1}
