"""Derive checks.bf16_parity_tolerance from the arithmetic neuronx-cc is asked for, not from the stand-in.

    python -m tools.bf16_tolerance [--pairs N] [--variant-pairs 512]

What it emulates. The default compiler arguments, `--auto-cast matmult --auto-cast-type bf16`, cast "only FP32
operations that use the Neuron matrix-multiplication engine" to BF16 (neuronx-cc's CLI reference; aws-neuron-sdk
`compiler/neuronx-cc/api-reference-guide`), and the engine accumulates in fp32. So every matrix multiply of the
model -- each Linear layer, and attention's Q.K^T and P.V -- is run here with both operands rounded to bfloat16
and the products summed in fp32 (a product of two bf16 numbers is exact in fp32, so this is that arithmetic up
to summation order); everything else (embeddings, layer norm, softmax, GELU, pooling, cosine) stays fp32, with
--enable-mixed-precision-accumulation (the default since Neuron 2.27) keeping softmax and layer norm in fp32.
Whether the engine's results are written back as fp32 or bf16 is not documented: the `bf16 results` row rounds
them too, a pessimistic variant, reported beside the primary one.

What it measures. The embedded model (configs/default.yaml: model, threshold, length buckets), fp32 against the
emulation, on every readable pair of the MSR Paraphrase TRAINING split (never dev or test), tokenized as the
handler does (serving.contract.encode_pairs, padded to the smallest bucket that holds the batch): per pair the
largest |score difference| (what trace's parity compares) and |paraphrase probability difference| (what the
served-parity check compares), and the labels that flip. On the first --variant-pairs pairs, the pessimistic
variant and a broken compile -- the attention mask dropped -- which the tolerance must stay far below.

The tolerance is BF16_MARGIN times the larger of the primary variant's two largest differences, rounded up to two
significant figures: tasks/common/compiler.py's BF16_EMULATED_DRIFT and BF16_PARITY_TOLERANCE, which this prints
beside it. What the margin covers: the real compiler fuses and reorders operations, approximates GELU and exp on
its own hardware, and may cast matmult-based transposes; none of that is emulated here. docs/neuron.md,
"Compiler arguments and parity", records the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from serving.contract import encode_pairs
from tasks.common import mrpc
from tasks.common.compiler import BF16_EMULATED_DRIFT, BF16_MARGIN, BF16_PARITY_TOLERANCE
from tasks.common.config import MRPC_TRAIN_FILE, load_config
from tasks.prepare.trace import load_checkpoint
from tasks.verify.accuracy import read_mrpc_lenient

TRAIN = MRPC_TRAIN_FILE
BATCH = 32  # pairs per forward pass: the scores do not depend on it
MATMULS = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}


class AutoCastMatmult(TorchFunctionMode):
    """--auto-cast matmult --auto-cast-type <dtype> on the CPU: every matrix multiply takes operands rounded to
    dtype (bf16 by default) and accumulates in fp32. round_results: also round each matrix multiply's result.
    The stand-in torch_neuronx (tests/stand_ins) traces its cast graphs under this too."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16, round_results: bool = False):
        super().__init__()
        self.dtype, self.round_results = dtype, round_results

    def _round(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rounded to dtype (to nearest, ties to even) and held in fp32 again."""
        return tensor.to(self.dtype).to(torch.float32)

    def _result(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._round(tensor) if self.round_results else tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, *rest = args
            bias = rest[0] if rest else kwargs.get("bias")
            out = self._result(F.linear(self._round(x), self._round(weight)))
            return out if bias is None else out + bias  # the bias add is not a matrix multiply: fp32
        if func in MATMULS:
            return self._result(func(self._round(args[0]), self._round(args[1])))
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        return func(*args, **kwargs)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        """softmax(Q.K^T * scale + mask).V with both products on the engine, softmax in fp32 (eval: no dropout)."""
        if is_causal:
            raise NotImplementedError("BERT's attention is not causal")
        scores = self._result(self._round(query) @ self._round(key).transpose(-2, -1)) * (
            scale or 1 / math.sqrt(query.size(-1))
        )
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        return self._result(self._round(scores.softmax(-1)) @ self._round(value))


def scores(model, pairs, encode, variants) -> list[torch.Tensor]:
    """[pairs, 2] scores per variant: variants maps the tensors of a batch to the scores of one way of running it."""
    out: list[list[torch.Tensor]] = [[] for _ in variants]
    with torch.no_grad():
        for start in range(0, len(pairs), BATCH):
            inputs = encode(pairs[start : start + BATCH])
            for rows, variant in zip(out, variants, strict=True):
                rows.append(variant(model, inputs).float())
    return [torch.cat(rows) for rows in out]


def fp32(model, inputs):
    return model(*inputs)


def matmult_bf16(model, inputs, round_results: bool = False):
    with AutoCastMatmult(round_results=round_results):
        return model(*inputs)


def bf16_results(model, inputs):
    return matmult_bf16(model, inputs, round_results=True)


def mask_dropped(model, inputs):
    """A broken compile's kind of damage (the stand-in's drop-attention-mask fault): padding attended to."""
    return model(*(torch.ones_like(t) if i in (1, 3) else t for i, t in enumerate(inputs)))


def compare(want: torch.Tensor, got: torch.Tensor) -> dict:
    """Largest and 99.9th-percentile |score diff|, largest |probability diff|, labels flipped (with how far the
    fp32 score of the nearest flipped pair was from the boundary)."""
    score = (want - got).abs().max(-1).values
    prob = (want.softmax(-1) - got.softmax(-1)).abs().max(-1).values
    flipped = want.argmax(-1) != got.argmax(-1)
    margin = (want[:, 1] - want[:, 0]).abs() / 2
    return {
        "pairs": len(want),
        "score_max": float(score.max()),
        "score_p999": float(score.quantile(0.999)),
        "prob_max": float(prob.max()),
        "flipped": int(flipped.sum()),
        "flipped_within": float(margin[flipped].max()) if flipped.any() else 0.0,
    }


def tolerance_from(primary: dict) -> float:
    """BF16_MARGIN x the larger largest difference, rounded up to two significant figures."""
    worst = BF16_MARGIN * max(primary["score_max"], primary["prob_max"])
    unit = 10 ** (math.floor(math.log10(worst)) - 1)
    return round(math.ceil(round(worst / unit, 9)) * unit, 12)


def measure(pairs: list[tuple[str, str]], variant_pairs: int) -> dict[str, dict]:
    """The three rows: the emulation over every pair, the pessimistic variant and the broken compile over the
    first variant_pairs (in the file's order: batches of mixed lengths, padded as served)."""
    config = load_config()
    model, tokenizer, kind = load_checkpoint(config.model)
    buckets = config.serving.length_buckets or [config.serving.max_length]

    def encode(batch):
        return encode_pairs(tokenizer, kind, batch, config.serving.max_length, buckets)[0]

    # Sorted by length, each batch pads to the smallest bucket that fits (the same scores, padding is masked): the
    # whole split costs about half what it would in the file's order.
    ordered = sorted(pairs, key=lambda pair: max(len(pair[0]), len(pair[1])))
    want, emulated = scores(model, ordered, encode, [fp32, matmult_bf16])
    head, rounded, dropped = scores(model, pairs[:variant_pairs], encode, [fp32, bf16_results, mask_dropped])
    return {
        "bf16 matmult": compare(want, emulated),
        "bf16 results": compare(head, rounded),
        "mask dropped": compare(head, dropped),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.bf16_tolerance", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=None, help="the first N training pairs (default: all)")
    parser.add_argument("--variant-pairs", type=int, default=512, help="pairs for the bf16-results and mask rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mrpc.require(TRAIN, "the BF16 drift the parity tolerance is derived from")
    except mrpc.DataMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.monotonic()
    pairs = read_mrpc_lenient(TRAIN)[0][: args.pairs]
    rows = measure(pairs, args.variant_pairs)
    print(f"MSR Paraphrase training split ({TRAIN.name}), the embedded model at the default night's buckets:")
    for name, row in rows.items():
        print(
            f"  {name:13} {row['pairs']:5} pairs: max |score diff| {row['score_max']:.2e} "
            f"(p99.9 {row['score_p999']:.2e}), max |probability diff| {row['prob_max']:.2e}, "
            f"labels flipped {row['flipped']}"
            + (f" (all within {row['flipped_within']:.1e} of the threshold)" if row["flipped"] else "")
        )
    derived = tolerance_from(rows["bf16 matmult"])
    print(
        f"tolerance: {BF16_MARGIN:g} x the larger largest difference of bf16 matmult, rounded up: {derived:g} "
        f"(tasks/common/compiler.py: BF16_EMULATED_DRIFT {BF16_EMULATED_DRIFT:g}, BF16_PARITY_TOLERANCE "
        f"{BF16_PARITY_TOLERANCE:g}{'' if math.isclose(derived, BF16_PARITY_TOLERANCE) else ': DIFFERS'}); "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
