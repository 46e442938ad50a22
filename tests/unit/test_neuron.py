"""Neuron's rules, against the stand-in runtime (tests/stand_ins): cores belong to the process that first
runs a graph, workers pin one core each, neuron-ls names the holders, casting loosens parity.

Another process holding a core is a real one, started without torch (the stand-in runtime is standard library
only). A worker's load is tested in this process as a fresh one (the stand-in's per-process reservation reset),
and the waits -- a worker's retry, a core's release after its owner died, a claim freed -- pass on a fake clock
(tests/unit/fake_time.py). One test runs the ceiling's real child process on a spare core."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from serving import claims as claims_module
from serving import model
from serving.claims import claim_core, core_claims, gpu_claims, record_gpu
from serving.contract import CLASS_NAMES, ModelInfo
from serving.model import load_graphs, pin_neuron_core, prepare_backend
from tasks.common import backends, tools
from tasks.common.compiler import auto_cast_type
from tasks.common.config import ChecksConfig
from tasks.common.sizing import ResolvedServing
from tasks.measure import ceiling
from tasks.prepare.compile import parity
from tasks.prepare.trace import TraceError
from tasks.serve import cores
from tests.stand_ins import host
from tests.unit.fake_time import FakeClock, TimeOn

PAIRS = [("A cat sat on the mat.", "A cat was sitting on the mat."), ("How old are you?", "What is your age?")] * 4


def hold_core(core: int) -> subprocess.Popen:
    """Another process that reserved `core` through the (stand-in) runtime, as running a Neuron graph does, and is
    still running. The runtime is standard library only: no torch to import."""
    code = (
        "import neuron_runtime_stand_in as runtime, sys; runtime.reserve(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "NEURON_RT_VISIBLE_CORES": str(core)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def ends(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait()


@pytest.fixture
def release_clock(neuron_host, monkeypatch):
    """The stand-in runtime's clock (a dead owner's core is released STAND_IN_CORE_RELEASE_S after it was first
    seen dead) on a fake clock at the real time, shared with the worker's retries (serving/model.py)."""
    import neuron_runtime_stand_in

    clock = FakeClock(start=time.time())
    monkeypatch.setattr(neuron_runtime_stand_in, "time", TimeOn(clock))
    monkeypatch.setattr(model, "time", TimeOn(clock))
    monkeypatch.setenv("STAND_IN_CORE_RELEASE_S", "0.5")
    return clock


def as_a_new_process(monkeypatch) -> None:
    """This process as a worker that has not loaded a graph yet: the stand-in runtime's reservation forgotten."""
    import neuron_runtime_stand_in

    monkeypatch.setattr(neuron_runtime_stand_in, "_held", None)


def test_a_held_core_is_refused_with_torch_neuronxs_text_and_freed_a_moment_after_its_owner_exits(
    neuron_host, release_clock, monkeypatch, capfd
):
    holder = hold_core(1)
    host.as_the_pipeline_starts_it(monkeypatch)
    import torch_neuronx

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
    with pytest.raises(RuntimeError, match="The PyTorch Neuron Runtime could not be initialized"):
        torch_neuronx.reserve()
    said = capfd.readouterr().err
    assert "NRT:nrt_allocate_neuron_cores  Logical Neuron Core(s) not available - Requested:lnc1-lnc1" in said
    ends(holder)
    with pytest.raises(RuntimeError, match="could not be initialized"):
        torch_neuronx.reserve()  # the owner is gone, its core not yet released
    release_clock.advance(0.4)
    with pytest.raises(RuntimeError, match="could not be initialized"):
        torch_neuronx.reserve()  # still not: released 0.5 s after it was first seen gone
    release_clock.advance(0.2)
    assert torch_neuronx.reserve() == [1]


def test_neuron_ls_names_the_process_holding_a_core_and_start_refuses_naming_it(neuron_host):
    holder = hold_core(0)
    try:
        listing = backends.neuron_ls()
        assert [(p.pid, p.device) for p in listing.processes] == [(holder.pid, 0)]
        assert "runtime.reserve()" in listing.processes[0].command
        with pytest.raises(cores.CoresError, match=f"pid {holder.pid} \\(.*python"):
            cores.ensure_free(workers=1)
        assert holder.poll() is None  # named, never stopped: it is not ours
    finally:
        ends(holder)


def test_neuron_ls_and_neuron_monitor_are_found_where_the_dlami_puts_them_off_a_service_path(neuron_host, monkeypatch):
    assert os.environ["PATH"] == host.SERVICE_PATH  # neither the environment's bin nor Neuron's tools
    monkeypatch.setenv("STAND_IN_NEURON_LS_NO_LONG_FLAG", "1")
    assert backends.neuron_core_count() == (2, "neuron-ls -j")
    assert tools.neuron_tool("neuron-monitor") == str(host.STAND_INS / "bin" / "neuron-monitor")


def test_a_child_finds_the_environments_tools_first_on_a_service_path(neuron_host):
    path = tools.with_environment_bin({"PATH": host.SERVICE_PATH})["PATH"].split(os.pathsep)
    assert path[0] == str(tools.environment_bin()) and path[1:] == host.SERVICE_PATH.split(os.pathsep)
    assert tools.with_environment_bin({"PATH": os.pathsep.join(path)})["PATH"].split(os.pathsep) == path  # once
    found = subprocess.run(
        [sys.executable, "-c", "import shutil; print(shutil.which('neuronx-cc'))"],
        env=tools.with_environment_bin(dict(os.environ)),
        capture_output=True,
        text=True,
    )
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
    assert auto_cast_type("neuron", []) is None  # Neuron 2.27's compiler (2.22) and later cast nothing by default
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
    """Tiny graphs compiled by the stand-in, in this test's process (trace loads nothing: no core is taken)."""
    host.as_the_pipeline_starts_it(monkeypatch)  # as the compile child has it
    import torch_neuronx

    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "0")
    model_dir = neuron_host.parent / "model"
    model_dir.mkdir()
    example = (torch.ones(2, 16, dtype=torch.long),) * 4
    torch.jit.save(torch_neuronx.trace(Tiny(), example), str(model_dir / "model_16.pt"))
    tokenizer.save_pretrained(str(model_dir))
    ModelInfo(
        kind="bi-encoder",
        backend="neuron",
        batch_size=2,
        max_length=16,
        buckets=[16],
        model_files={16: "model_16.pt"},
        class_names=list(CLASS_NAMES),
        source="test",
        parity_max_abs_diff=0.0,
    ).write(model_dir)
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES")
    return model_dir


def test_the_ceiling_takes_a_core_no_process_holds_or_is_unavailable_saying_why(
    neuron_model_dir, neuron_host, tmp_path, monkeypatch
):
    server_dir = tmp_path / "server"
    assert claim_core(cores.claims_dir(server_dir), 2, os.getpid()) == 0  # this process compiled on core 0: a worker
    held = hold_core(1)  # a process that is not ours, on the same device
    try:
        resolved = ResolvedServing(
            backend="neuron",
            device_name="2 NeuronCores",
            cores=2,
            cores_source="neuron-ls",
            initial_workers=1,
            threads_per_worker=1,
        )
        with pytest.raises(
            ceiling.CeilingUnavailable, match=f"no NeuronCore is free.*worker pid {os.getpid()}.*pid {held.pid}"
        ):
            ceiling.measure_beside(server_dir, resolved, neuron_model_dir, PAIRS, seconds=0.1)
        # The runtime refusing the core it was given (whatever neuron-ls said) is the same verdict, with its words:
        # what the ceiling's child does on NeuronCore 1, here in this process as a fresh one.
        monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
        as_a_new_process(monkeypatch)
        with pytest.raises(ceiling.CeilingUnavailable, match="did not load on NeuronCore 1.*could not be initialized"):
            ceiling.load_models(neuron_model_dir)
        monkeypatch.delenv("NEURON_RT_VISIBLE_CORES")
        # A second device, no process on it: the ceiling's real child process measures on its core 2.
        monkeypatch.setenv("STAND_IN_NEURON_DEVICES", "2")
        four = resolved.model_copy(update={"cores": 4})
        assert ceiling.measure_beside(server_dir, four, neuron_model_dir, PAIRS, seconds=0.02).batches_per_s > 0
        events = [json.loads(line) for line in neuron_host.read_text().splitlines()]
        children = [e["cores"] for e in events if e["event"] == "reserve" and e["pid"] not in (os.getpid(), held.pid)]
        assert children == [[2]]  # the child's reservation: the core it was given
    finally:
        ends(held)


@pytest.mark.parametrize(
    "said",
    [
        "RuntimeError: The PyTorch Neuron Runtime could not be initialized. Neuron Driver issues are logged",  # #718
        "RuntimeError: Neuron runtime cannot be initialized; cannot determine the number of available NeuronCores",
        "ERROR   NRT:nrt_allocate_neuron_cores               NeuronCore(s) not available - Requested:1 Available:0",
        "ERROR   NRT:nrt_allocate_neuron_cores               Virtual Neuron Core(s) not available - Requested:2 "
        "Available:0 Virtual Core size 1",  # aws-neuron-sdk#1065
        "NRT:nrt_allocate_neuron_cores  Logical Neuron Core(s) not available - Requested:lnc0-lnc0 Available:0 "
        "Logical Core size:2 (cores busy, ret=-16)",  # users' 2026 logs
        "terminate called after throwing an instance of 'c10::Error'\n  what():  The PyTorch Neuron Runtime could "
        "not be initialized. Neuron Driver issues are logged",  # huggingface/optimum-neuron#377, on Inf2
    ],
)
def test_every_wording_of_a_refused_core_is_recognised(said):
    assert claims_module.NEURON_CORE_REFUSED.search(said)


def test_a_refusal_that_aborts_the_ceilings_child_is_an_unavailable_ceiling_in_the_runtimes_words(
    neuron_model_dir, monkeypatch
):
    """torch-neuronx may die of the refusal (c10::Error, SIGABRT) rather than raise it: the child then leaves no
    result, only its last lines."""
    monkeypatch.setenv("STAND_IN_NEURON_REFUSAL", "abort")
    held = hold_core(1)
    try:
        with pytest.raises(ceiling.CeilingUnavailable) as caught:
            ceiling.measure(neuron_model_dir, PAIRS, 1, 1, seconds=0.1, neuron_core=1)
    finally:
        ends(held)
    said = caught.value.message
    assert "the process died of it (killed by SIGABRT)" in said
    assert "Logical Neuron Core(s) not available - Requested:lnc1-lnc1" in said and "c10::Error" in said
    assert ceiling.NoCeiling(unavailable=said).unavailable == said  # what summary.json's benchmark.ceiling says


def test_torch_neuronx_imports_only_with_the_environments_bin_on_path_as_the_doctors_holder_has_it(
    neuron_model_dir, monkeypatch
):
    """torch-neuronx runs libneuronpjrt-path from PATH as it imports (users' reports). The flow's service PATH
    lacks it; every Neuron child the pipeline and the doctor start is given it -- the doctor's core holder too,
    which would otherwise fail and be read as a busy core."""
    from tasks.doctor import steps

    monkeypatch.setenv("PATH", host.SERVICE_PATH)  # the flow's own, under systemd
    monkeypatch.delitem(sys.modules, "torch_neuronx")
    with pytest.raises(FileNotFoundError, match="libneuronpjrt-path"):
        import torch_neuronx  # noqa: F401
    holder = steps._hold_core(neuron_model_dir, 1)
    try:
        assert [(p.pid, p.device) for p in backends.neuron_ls().processes] == [(holder.pid, 0)]
    finally:
        steps._release(holder)


def test_a_starting_worker_waits_for_the_core_a_dying_worker_still_claims(tmp_path, fake_clock, monkeypatch):
    claims = tmp_path / "claims"
    staying, dying, another = (
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)
    )

    def sleep(seconds: float) -> None:  # the dying worker exits while the new one waits
        fake_clock.sleep(seconds)
        dying.kill()
        dying.wait()

    monkeypatch.setattr(claims_module, "time", TimeOn(fake_clock))
    monkeypatch.setattr(claims_module.time, "sleep", sleep)
    try:
        assert (claim_core(claims, 2, staying.pid), claim_core(claims, 2, dying.pid)) == (0, 1)
        assert claim_core(claims, 2, os.getpid(), wait_s=30) == 1  # once the dying worker has exited
        assert fake_clock.sleeps == [0.25]  # it waited for it: one poll
        with pytest.raises(RuntimeError, match="none was freed within 0.3 s"):
            claim_core(claims, 2, another.pid, wait_s=0.3)
    finally:
        for process in (staying, dying, another):
            process.kill()
            process.wait()


def test_a_worker_loads_once_the_runtime_releases_its_core_and_gives_up_past_its_bound(
    neuron_model_dir, release_clock, monkeypatch, caplog
):
    """serving/model.load_graphs as a fresh worker runs it, on NeuronCore 1 of a process that held it."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "1")
    as_a_new_process(monkeypatch)
    info = ModelInfo.read(neuron_model_dir)
    held = hold_core(1)
    try:
        with pytest.raises(RuntimeError, match="could not be initialized"):
            load_graphs(neuron_model_dir, info, info.buckets, torch.device("cpu"), wait_s=0.5)
        assert release_clock.sleeps == [0.5, 0.5]  # tried again until past its bound, then gave up
    finally:
        ends(held)
    loaded = load_graphs(neuron_model_dir, info, info.buckets, torch.device("cpu"), wait_s=30)
    assert sorted(loaded) == [16]  # the dead owner's core, once released: 0.5 s after it was seen gone
    assert release_clock.sleeps == [0.5, 0.5, 0.5]
    assert "NeuronCore 1 refused" in caplog.text


def test_cuda_workers_record_the_gpu_torchserve_gave_them_and_a_dead_workers_record_is_dropped(tmp_path, monkeypatch):
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
