"""Stand-in for torch-neuronx: compiles on the CPU, and models what the pipeline must get right on Neuron.

- core ownership: the first stand-in graph a process runs or loads reserves its NeuronCores (all of
  them, or what NEURON_RT_VISIBLE_CORES / NEURON_RT_NUM_CORES ask for) until the process exits; a
  process asking for a reserved core gets the runtime's error. Reservations are lock files in
  $TORCH_NEURONX_STAND_IN_CORES, one per core, holding the owner's pid (a dead pid's core is free);
  bin/neuron-ls reads them back as its process list.
- numerics: --auto-cast matmult|all in compiler_args compiles in --auto-cast-type (bf16 default);
  without --auto-cast (neuronx-cc >= 2.27's default, none) the graph stays fp32.
- a graph needs this package to load: it calls the op neuron_stand_in::run_on_neuron, registered on
  import, as a real Neuron graph needs the ops torch_neuronx registers.
- $TORCH_NEURONX_STAND_IN_FAULT=nan|drop-attention-mask|swap-inputs compiles a broken graph, as a
  compiler bug would, so tests can prove parity catches one.
- every import, trace and reservation is a JSON line (with its pid) in $TORCH_NEURONX_STAND_IN_LOG.
"""

import copy
import fcntl
import json
import os
import time
from pathlib import Path

import torch

__version__ = "0.0.0+stand-in"

LOG_ENV = "TORCH_NEURONX_STAND_IN_LOG"
CORES_ENV = "TORCH_NEURONX_STAND_IN_CORES"
FAULT_ENV = "TORCH_NEURONX_STAND_IN_FAULT"
_held: list[int] | None = None  # this process's cores, once reserved


def _record(event: str, **facts) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **facts}) + "\n")


def cores_dir() -> Path:
    # Host-wide, like the runtime's ownership: not under TMPDIR, which TorchServe changes per server.
    return Path(os.environ.get(CORES_ENV) or f"/tmp/torch-neuronx-stand-in-cores-{os.getuid()}")


def total_cores() -> int:
    """The host's NeuronCores, as bin/neuron-ls lists them."""
    return int(os.environ.get("STAND_IN_NEURON_DEVICES", "1")) * int(os.environ.get("STAND_IN_CORES_PER_DEVICE", "2"))


def owners() -> dict[int, int]:
    """{core: pid} for every core a live process holds."""
    found = {}
    for lock in cores_dir().glob("nc*"):
        try:
            pid = int(lock.read_text())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            found[int(lock.name[2:])] = pid
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # an exited process awaiting its parent holds no device


def _parse_visible(text: str) -> list[int]:
    cores = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cores += range(int(first), int(last or first) + 1)
    return cores


def reserve() -> list[int]:
    """The runtime's nrt_init: take this process's cores, or fail as the runtime does."""
    global _held
    if _held is not None:
        return _held
    directory = cores_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        taken = {core: pid for core, pid in owners().items() if pid != os.getpid()}
        free = [core for core in range(total_cores()) if core not in taken]
        visible, count = os.environ.get("NEURON_RT_VISIBLE_CORES"), os.environ.get("NEURON_RT_NUM_CORES")
        if visible:  # wins over NUM_CORES
            wanted = _parse_visible(visible)
        elif count:
            wanted = free[: int(count)] if len(free) >= int(count) else list(range(int(count)))
        else:
            wanted = list(range(total_cores()))
        if any(core in taken or core >= total_cores() for core in wanted):
            _record("reserve-failed", requested=wanted, holders=taken)
            raise RuntimeError(f"ERROR NRT:nrt_allocate_neuron_cores NeuronCore(s) not available - "
                               f"Requested:nc{wanted[0]}-nc{wanted[-1]} Available:{len(free)}")
        for core in wanted:
            (directory / f"nc{core}").write_text(str(os.getpid()))
    _held = wanted
    _record("reserve", cores=wanted)
    return wanted


@torch.library.custom_op("neuron_stand_in::run_on_neuron", mutates_args=())
def run_on_neuron(x: torch.Tensor) -> torch.Tensor:
    """Every stand-in graph starts here: running one needs this process's cores."""
    reserve()
    return x.clone()


@run_on_neuron.register_fake
def _(x):
    return torch.empty_like(x)


class _Cast16Linear(torch.nn.Module):
    """A Linear whose matrix multiply runs in 16 bits, as --auto-cast matmult compiles it."""

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.linear, self.dtype = linear, dtype

    def forward(self, x):
        bias = self.linear.bias.to(self.dtype) if self.linear.bias is not None else None
        return torch.nn.functional.linear(x.to(self.dtype), self.linear.weight.to(self.dtype), bias).to(x.dtype)


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


def _cast(func: torch.nn.Module, compiler_args) -> tuple[torch.nn.Module, str]:
    args = compiler_args.split() if isinstance(compiler_args, str) else list(compiler_args or [])
    values = {}
    for index, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if name in ("--auto-cast", "--auto-cast-type"):
            values[name] = inline or args[index + 1]
    mode, kind = values.get("--auto-cast", "none"), values.get("--auto-cast-type", "bf16")
    if mode == "none":
        return func, "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(kind)
    if dtype is None:
        raise NotImplementedError(f"the stand-in models --auto-cast-type bf16 and fp16, not {kind}")
    func = copy.deepcopy(func)
    if mode == "all":
        return func.to(dtype), kind
    for name, module in list(func.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, _Cast16Linear(child, dtype))
    return func, kind


def trace(func, example_inputs, *args, compiler_workdir=None, compiler_args=None, **kwargs):
    fault = os.environ.get(FAULT_ENV) or None
    cast, precision = _cast(func, compiler_args)
    _record("trace", shapes=[list(t.shape) for t in example_inputs], dtypes=[str(t.dtype) for t in example_inputs],
            module=type(func).__name__, options=sorted(kwargs) + ["compiler_args"] * bool(compiler_args),
            compiler_args=compiler_args, precision=precision, fault=fault)
    graph = torch.jit.trace(_OnNeuron(cast, fault), tuple(example_inputs))
    graph(*example_inputs)  # torch_neuronx loads the compiled graph: this process now holds cores
    return graph


def _loads_on_neuron(load):
    """torch.jit.load of a Neuron graph loads it onto the process's cores, as the runtime does."""

    def wrapped(*args, **kwargs):
        module = load(*args, **kwargs)
        if "neuron_stand_in::run_on_neuron" in str(module.inlined_graph):
            reserve()
        return module

    return wrapped


torch.jit.load = _loads_on_neuron(torch.jit.load)
_record("import", **{key: value for key, value in os.environ.items() if key.startswith("NEURON_RT_")})
