"""Stand-in for torch-neuronx: compiles on the CPU, and models what the pipeline must get right on Neuron
(each behaviour's evidence: tests/stand_ins/README.md).

- import: torch-neuronx runs `libneuronpjrt-path` (a console script of the environment's bin) by name from
  PATH as it imports; without it on PATH the import fails with FileNotFoundError, as users report.
- core ownership: the first stand-in graph a process runs or loads reserves its NeuronCores (all of
  them, or what NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES ask for) until the process exits, and a
  moment longer (neuron_runtime_stand_in.py); a process asking for a held core gets the runtime's NRT
  line on stderr and torch-neuronx's "could not be initialized" RuntimeError -- or, with
  STAND_IN_NEURON_REFUSAL=abort, dies of it (c10::Error, SIGABRT). trace itself loads nothing: the first
  call of the traced graph does. bin/neuron-ls reads the same reservations back as its process list.
- the compiler: trace runs `neuronx-cc` found by name on PATH, as torch_neuronx does; without one it
  raises torch_neuronx's "neuronx-cc compiler binary does not exist"; a compile that fails (the stand-in
  compiler with islpy 2026.2, NCC_ISMP902) fails the trace. The stand-in compiler (compiler/neuronx-cc)
  is installed where pip puts the real one: the environment's bin.
- trace under torch.inference_mode() fails as torch-xla's functionalization does on inference tensors.
- numerics: --auto-cast matmult in compiler_args rounds every matrix multiply's operands to --auto-cast-type
  (bf16 default, fp16) and accumulates in fp32 (tools/bf16_tolerance.AutoCastMatmult, the same arithmetic the
  BF16 tolerance is derived from); --auto-cast all casts the whole model; without --auto-cast (the default,
  none, since Neuron 2.27's compiler 2.22) the graph stays fp32.
- a graph needs this package to load: it calls the op neuron_stand_in::run_on_neuron, registered on
  import, as a real Neuron graph needs the ops torch_neuronx registers.
- $TORCH_NEURONX_STAND_IN_FAULT=nan|drop-attention-mask|swap-inputs compiles a broken graph, as a
  compiler bug would, so tests can prove parity catches one.
- every import, trace and reservation is a JSON line (with its pid) in $TORCH_NEURONX_STAND_IN_LOG.
"""

import contextlib
import copy
import os
import shutil
import subprocess
import sys

import torch

# The runtime (nrt_init: reserve) is standard library only, so a process can hold a core without importing torch.
from neuron_runtime_stand_in import (  # noqa: F401
    LOG_ENV,
    RUNTIME_NOT_INITIALIZED,
    _record,
    cores_dir,
    holders,
    locked,
    owners,
    reserve,
    total_cores,
)

__version__ = "0.0.0+stand-in"

CORES_ENV = "TORCH_NEURONX_STAND_IN_CORES"
FAULT_ENV = "TORCH_NEURONX_STAND_IN_FAULT"


def _compile(compiler_args) -> str:
    """Run neuronx-cc as torch_neuronx does: found by name on PATH, else torch_neuronx's own error. The compiler's
    own words go to this process's stdout (users find NCC_ISMP902 there, not in the exception)."""
    compiler = shutil.which("neuronx-cc")
    if compiler is None:
        raise RuntimeError("neuronx-cc compiler binary does not exist")
    args = compiler_args.split() if isinstance(compiler_args, str) else list(compiler_args or [])
    sys.stdout.flush()
    done = subprocess.run([compiler, "compile", "--framework", "XLA", "--target", "inf2", *args])
    if done.returncode != 0:
        raise RuntimeError(f"neuronx-cc compilation failed with {done.returncode}")
    return compiler


# torch-neuronx runs libneuronpjrt-path (libneuronxla's console script) from PATH as it imports: without the
# environment's bin on PATH, "FileNotFoundError: [Errno 2] No such file or directory: 'libneuronpjrt-path'".
subprocess.run(["libneuronpjrt-path"], check=True, stdout=subprocess.DEVNULL)

_loading = [True]


@contextlib.contextmanager
def _not_loading():
    _loading[0] = False
    try:
        yield
    finally:
        _loading[0] = True


@torch.library.custom_op("neuron_stand_in::run_on_neuron", mutates_args=())
def run_on_neuron(x: torch.Tensor) -> torch.Tensor:
    """Every stand-in graph starts here: running one needs this process's cores (not while trace records it)."""
    if _loading[0]:
        reserve()
    return x.clone()


@run_on_neuron.register_fake
def _(x):
    return torch.empty_like(x)


class _OnNeuron(torch.nn.Module):
    """The compiled graph: claims the cores, runs the (cast) model, returns fp32 as Neuron graphs do."""

    def __init__(self, func, fault: str | None):
        super().__init__()
        self.func, self.fault = func, fault

    def forward(self, *inputs):
        inputs = (run_on_neuron(inputs[0]), *inputs[1:])
        if self.fault == "drop-attention-mask":  # masks are input 1 (and 3 for a bi-encoder's second sentence)
            inputs = tuple(torch.ones_like(t) if i in (1, 3) else t for i, t in enumerate(inputs))
        if self.fault == "swap-inputs":  # token ids and attention mask exchanged
            inputs = (inputs[1], inputs[0], *inputs[2:])
        out = self.func(*inputs).float()
        return out * float("nan") if self.fault == "nan" else out


def _cast(func: torch.nn.Module, compiler_args):
    """(the module to trace, the mode to trace it under, the precision) for these compiler arguments."""
    args = compiler_args.split() if isinstance(compiler_args, str) else list(compiler_args or [])
    values = {}
    for index, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in ("--auto-cast", "--auto-cast-type"):
            values[name] = inline or args[index + 1]
    mode, kind = values.get("--auto-cast", "none"), values.get("--auto-cast-type", "bf16")
    if mode == "none":
        return func, contextlib.nullcontext(), "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
    if dtype is None:
        raise NotImplementedError(f"the stand-in models --auto-cast-type bf16 and fp16, not {kind}")
    if mode == "all":
        return copy.deepcopy(func).to(dtype), contextlib.nullcontext(), kind
    from tools.bf16_tolerance import AutoCastMatmult  # the checkout's: the compile child has it on its path

    return func, AutoCastMatmult(dtype), kind


def trace(func, example_inputs, *args, compiler_workdir=None, compiler_args=None, **kwargs):
    if torch.is_inference_mode_enabled():  # torch-xla's functionalization on an inference tensor
        raise RuntimeError("Cannot set version_counter for inference tensor")
    fault = os.environ.get(FAULT_ENV) or None
    cast, casting, precision = _cast(func, compiler_args)
    compiler = _compile(compiler_args)
    _record(
        "trace",
        compiler=compiler,
        shapes=[list(t.shape) for t in example_inputs],
        dtypes=[str(t.dtype) for t in example_inputs],
        module=type(func).__name__,
        options=sorted(kwargs) + ["compiler_args"] * bool(compiler_args),
        compiler_args=compiler_args,
        precision=precision,
        fault=fault,
    )
    with casting:  # the casts are recorded into the graph
        # The op that claims the cores is recorded, not run: trace compiles with loading off, so the graph's
        # first call takes this process's cores, not trace (README.md, "trace loads nothing").
        with _not_loading():
            graph = torch.jit.trace(_OnNeuron(cast, fault), tuple(example_inputs), check_trace=False)
    return graph


def _loads_on_neuron(load):
    """torch.jit.load of a Neuron graph loads it onto the process's cores, as the runtime does."""

    def wrapped(*args, **kwargs):
        module = load(*args, **kwargs)
        if "neuron_stand_in::run_on_neuron" in str(module.inlined_graph):
            import neuron_runtime_stand_in  # the runtime imported now: tests import the stand-ins afresh

            neuron_runtime_stand_in.reserve()
        return module

    wrapped.neuron_stand_in = True
    return wrapped


if not getattr(torch.jit.load, "neuron_stand_in", False):  # wrapped once per process, however often imported
    torch.jit.load = _loads_on_neuron(torch.jit.load)
_record("import", **{key: value for key, value in os.environ.items() if key.startswith("NEURON_RT_")})
