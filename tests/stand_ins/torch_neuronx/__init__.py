"""Stand-in for torch-neuronx: records what the pipeline asks of it, compiles on the CPU."""

import json
import os
import time

import torch

__version__ = "0.0.0+stand-in"


def _record(event: str, **facts) -> None:
    path = os.environ.get("TORCH_NEURONX_STAND_IN_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **facts}) + "\n")


def trace(func, example_inputs, *args, **kwargs):
    _record("trace", shapes=[list(t.shape) for t in example_inputs], dtypes=[str(t.dtype) for t in example_inputs],
            module=type(func).__name__, options=sorted(kwargs))
    return torch.jit.trace(func, example_inputs)


_record("import", **{key: value for key, value in os.environ.items() if key.startswith("NEURON_RT_")})
