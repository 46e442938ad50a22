"""Measure how far the stand-in's BF16 graph of the embedded model drifts from the fp32 original.

    PYTHONPATH=tests/stand_ins python -m tools.bf16_tolerance [--max-length 128] [--pairs N]

Traces the embedded model through tests/stand_ins/torch_neuronx with the default compiler arguments
(--auto-cast matmult --auto-cast-type bf16) at max_length, runs it and the original on the golden pairs
and the first N MSR Paraphrase dev pairs, and prints the largest score and probability differences and
the labels that flipped; then the same for the stand-in's broken compiles, which parity must reject.
checks.bf16_parity_tolerance (tasks/common/config.py) is the healthy figure with a margin, far below the
broken ones. Run in its own process: it reserves the stand-in's NeuronCores until it exits.
"""

from __future__ import annotations

import argparse
import os

import torch

from serving.contract import encode_pairs
from tasks.common.compiler import TUTORIAL_COMPILER_ARGS
from tasks.common.config import MRPC_DEV_FILE, REPO_ROOT, ServingConfig, load_config
from tasks.prepare.trace import load_checkpoint
from tasks.verify.accuracy import read_mrpc_lenient
from tasks.verify.pairs import load_golden

DEV = MRPC_DEV_FILE


def drift(fault: str | None, pairs, max_length: int, batch: int = 8) -> tuple[float, float, int]:
    """(largest |score diff|, largest |paraphrase probability diff|, labels flipped) over the pairs."""
    import torch_neuronx

    os.environ.pop(torch_neuronx.FAULT_ENV, None)
    os.environ.update({torch_neuronx.FAULT_ENV: fault} if fault else {})
    model, tokenizer, kind = load_checkpoint(load_config().model)  # the default night's model and threshold
    pairs = pairs[: len(pairs) // batch * batch]
    graph, score, prob, flipped = None, 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch):
            inputs, _ = encode_pairs(tokenizer, kind, pairs[start : start + batch], max_length)
            if graph is None:
                graph = torch_neuronx.trace(model, inputs, compiler_args=list(TUTORIAL_COMPILER_ARGS))
            want, got = model(*inputs).float(), graph(*inputs).float()
            score = max(score, float((want - got).abs().max()))
            prob = max(prob, float((want.softmax(-1) - got.softmax(-1)).abs().max()))
            flipped += int((want.argmax(-1) != got.argmax(-1)).sum())
    return score, prob, flipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=ServingConfig().max_length)
    parser.add_argument("--pairs", type=int, default=400)
    args = parser.parse_args()
    pairs = [(a, b) for a, b, _ in load_golden(REPO_ROOT / "configs" / "golden_pairs.yaml")]
    if DEV.is_file():
        pairs += read_mrpc_lenient(DEV)[0][: args.pairs]
    for fault in (None, "drop-attention-mask", "swap-inputs", "nan"):
        score, prob, flipped = drift(fault, pairs, args.max_length)
        print(
            f"{fault or 'healthy bf16':20} {len(pairs)} pairs at {args.max_length}: max |score diff| {score:.2e}, "
            f"max |probability diff| {prob:.2e}, labels flipped {flipped}"
        )


if __name__ == "__main__":
    main()
