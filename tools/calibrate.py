"""Choose a bi-encoder's cosine threshold on the MSR Paraphrase TRAINING split.

    python -m tools.calibrate [TRAIN_TSV] [--model DIR]

Prints the threshold that maximises training accuracy, and that accuracy. For the embedded model (the
default) the result is written by hand into tasks/common/embedded.py (THRESHOLD) and the README; for a
bi-encoder checkpoint of your own, into your config's model.threshold. So a run never tunes itself: the dev
split stays a measurement, and no test split is ever looked at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from serving.contract import encode_pairs
from tasks.common import mrpc
from tasks.common.config import MRPC_TRAIN_FILE, ModelConfig, ServingConfig
from tasks.common.embedded import EMBEDDED_MODEL
from tasks.prepare.trace import load_checkpoint
from tasks.verify.accuracy import read_mrpc_lenient

DEFAULT_TRAIN = MRPC_TRAIN_FILE


def cosines(
    pairs: list[tuple[str, str]], max_length: int | None = None, chunk: int = 64, source: str = EMBEDDED_MODEL
) -> np.ndarray:
    """Cosine similarity of each pair under the model (threshold 0 -> margin = cosine)."""
    max_length = max_length or ServingConfig().max_length  # what a run serves at, unless told otherwise
    scorer, tokenizer, kind = load_checkpoint(ModelConfig(source=source, kind="bi-encoder", threshold=0.0))
    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), chunk):
            inputs, _ = encode_pairs(tokenizer, kind, pairs[start : start + chunk], max_length)
            out.append(scorer(*inputs)[:, 1].numpy())
    return np.concatenate(out)


def best_threshold(similarity: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold (midpoint between neighbouring scores) with the highest accuracy."""
    ordered = np.sort(similarity)
    candidates = (ordered[1:] + ordered[:-1]) / 2
    accuracy = [((similarity >= t) == labels).mean() for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train_tsv", nargs="?", type=Path, default=DEFAULT_TRAIN)
    parser.add_argument(
        "--model", default=EMBEDDED_MODEL, help="the bi-encoder checkpoint directory (default: %(default)s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mrpc.require(args.train_tsv, "a threshold (the training pairs it is chosen on)")
    except mrpc.DataMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pairs, labels, skipped = read_mrpc_lenient(args.train_tsv)
    if skipped:
        print(f"skipped malformed lines {skipped} of {args.train_tsv}")
    threshold, accuracy = best_threshold(cosines(pairs, source=args.model), labels)
    print(f"pairs={len(pairs)} threshold={threshold:.4f} training_accuracy={accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
