"""The token lengths behind the default length buckets, measured on the MSR Paraphrase TRAINING split.

    python -m tools.token_lengths [TRAIN_TSV] [--batch-size 6] [--batches 20000] [--seed 0]

With the embedded model's tokenizer, special tokens included, as the handler tokenizes (serving/contract.py
encode_pairs: a bi-encoder batch runs at the bucket that holds its longest sentence): each sentence's length
(mean, p50, p99), the longest sentence of random batches of `batch_size` pairs (p50, p99), and the share of such
batches each default bucket would run (docs/benchmark.md, "Length buckets"). Batches are drawn with numpy's
generator seeded by --seed: the same figures every time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tasks.common import mrpc
from tasks.common.config import MRPC_TRAIN_FILE, ServingConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.token_lengths", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("train_tsv", nargs="?", type=Path, default=MRPC_TRAIN_FILE)
    parser.add_argument("--batch-size", type=int, default=ServingConfig().batch_size)
    parser.add_argument("--batches", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def lengths(pairs: list[tuple[str, str]]) -> np.ndarray:
    """[pairs, 2]: each sentence's token count with the embedded model's tokenizer, [CLS] and [SEP] included."""
    from transformers import AutoTokenizer

    from tasks.prepare.trace import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)
    texts = [a for a, _ in pairs] + [b for _, b in pairs]
    counts = np.array([len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]])
    return counts.reshape(2, len(pairs)).T


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mrpc.require(args.train_tsv, "the token lengths the default length buckets were chosen by")
    except mrpc.DataMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pairs, _, skipped = mrpc.read(args.train_tsv)
    tokens = lengths(pairs)
    sentences = tokens.ravel()
    rng = np.random.default_rng(args.seed)
    draws = np.array([rng.choice(len(pairs), args.batch_size, replace=False) for _ in range(args.batches)])
    longest = tokens[draws].max(axis=(1, 2))
    buckets = ServingConfig().buckets()
    runs_at = np.searchsorted(buckets, np.minimum(longest, buckets[-1]))
    print(f"{args.train_tsv.name}: {len(pairs)} pairs (skipped malformed lines {skipped})")
    print(
        f"sentence tokens: mean {sentences.mean():.1f}, p50 {np.percentile(sentences, 50):.0f}, "
        f"p99 {np.percentile(sentences, 99):.0f}, max {sentences.max()}"
    )
    print(
        f"longest sentence of a batch of {args.batch_size} ({args.batches} random batches, seed {args.seed}): "
        f"p50 {np.percentile(longest, 50):.0f}, p99 {np.percentile(longest, 99):.0f}"
    )
    shares = ", ".join(f"{bucket}: {np.mean(runs_at == i):.1%}" for i, bucket in enumerate(buckets))
    print(f"batches per default bucket {buckets}: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
