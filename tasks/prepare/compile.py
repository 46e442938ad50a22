"""The trace stage's child process: compile one graph per length bucket, check each against the original
model, and write them with the tokenizer and model_info.json.

Run by tasks/prepare/trace.py as `python -m tasks.prepare.compile` (tasks/common/child.py), never imported by the
flow: on Neuron, compiling and running a graph takes NeuronCores until the process exits, and this
process exits before TorchServe's workers need them.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

from serving.contract import ModelInfo, encode_pairs
from tasks.common import child
from tasks.common.config import ModelConfig
from tasks.common.versions import package_versions
from tasks.prepare.trace import EXAMPLE_PAIRS, TraceError, load_checkpoint

log = logging.getLogger(__name__)


def build(request: dict) -> dict:
    """request: model (ModelConfig), batch_size, max_length, buckets, out_dir, backend, parity_tolerance,
    compiler_args. Returns the ModelInfo written, as a dict."""
    model = ModelConfig.model_validate(request["model"])
    out_dir, backend = Path(request["out_dir"]), request["backend"]
    batch_size, max_length, tolerance = request["batch_size"], request["max_length"], request["parity_tolerance"]
    compiler_args = list(request["compiler_args"]) if backend == "neuron" else []
    wrapped, tokenizer, kind = load_checkpoint(model)
    pairs = [EXAMPLE_PAIRS[i % len(EXAMPLE_PAIRS)] for i in range(batch_size)]
    files, diff = {}, 0.0
    # no_grad, not inference_mode: Neuron's tracing examples use no_grad, and torch-xla's functionalization
    # is reported to fail on inference tensors (tests/stand_ins/README.md).
    with torch.no_grad():
        for length in request["buckets"]:
            # The original model sees exactly the graph's inputs: at a bucket shorter than the examples,
            # both are truncated alike, so parity compares like with like.
            inputs, _ = encode_pairs(tokenizer, kind, pairs, max_length, [length])
            if inputs[0].shape[1] != length:
                raise TraceError(
                    f"bucket {length}: the example inputs came out {inputs[0].shape[1]} tokens long",
                    fix=f"remove {length} from serving.length_buckets",
                )
            traced, device_inputs = compile_for(backend, wrapped, inputs, compiler_args)
            got = traced(*device_inputs).cpu().float()
            diff = max(diff, parity(wrapped(*inputs), got, tolerance, length))
            files[length] = f"model_{length}.pt"
            torch.jit.save(traced, str(out_dir / files[length]))
            log.info("bucket %d: traced %s, parity %.2e (tolerance %g)", length, list(inputs[0].shape), diff, tolerance)
    tokenizer_files = [Path(p).name for p in tokenizer.save_pretrained(str(out_dir)) if Path(p).is_file()]
    versions = package_versions(
        "torch", "transformers", *(["torch-neuronx", "neuronx-cc"] if backend == "neuron" else [])
    )
    info = ModelInfo(
        kind=kind,
        backend=backend,
        batch_size=batch_size,
        max_length=max_length,
        buckets=request["buckets"],
        model_files=files,
        tokenizer_files=tokenizer_files,
        class_names=wrapped.class_names,
        threshold=model.threshold if kind == "bi-encoder" else None,
        source=model.source,
        compiler_args=compiler_args,
        parity_max_abs_diff=diff,
        versions={"python": platform.python_version(), **versions},
    )
    info.write(out_dir)
    return info.model_dump(mode="json")


def compile_for(
    backend: str, wrapped: torch.nn.Module, inputs: tuple, compiler_args: list[str]
) -> tuple[torch.nn.Module, tuple]:
    """One static graph for the backend; returns it with the inputs moved where it runs."""
    if backend == "neuron":
        import torch_neuronx  # only here, in this short-lived child: it takes NeuronCores until exit

        return torch_neuronx.trace(wrapped, inputs, compiler_args=compiler_args), inputs
    if backend == "cuda":
        wrapped = wrapped.to("cuda")
        inputs = tuple(t.to("cuda") for t in inputs)
    return torch.jit.trace(wrapped, inputs), inputs


def parity(expected: torch.Tensor, got: torch.Tensor, tolerance: float, length: int) -> float:
    """Fail on NaN/Inf (reported after Neuron tracing with newer transformers), drift or any changed label."""
    if not torch.isfinite(got).all():
        raise TraceError(
            f"bucket {length}: the traced model returned NaN or Inf scores; do not serve it",
            fix="check the torch-neuronx / transformers versions the run recorded",
        )
    diff = float((expected - got).abs().max())
    flipped = int((expected.argmax(-1) != got.argmax(-1)).sum())
    if diff > tolerance or flipped:
        raise TraceError(
            f"bucket {length}: traced scores differ from the original model by {diff:.2e} "
            f"(tolerance {tolerance:g}) and {flipped} of {len(got)} labels differ",
            fix="do not serve this graph; if only the tolerance is too tight for the compiler's "
            "casting, raise checks.parity_tolerance / checks.bf16_parity_tolerance",
        )
    return diff


if __name__ == "__main__":
    child.main(build)
