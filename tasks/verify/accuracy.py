"""Labelled pair files (MSR Paraphrase / GLUE MRPC TSV) and the scores computed on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common import mrpc


def read_mrpc(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Pairs and 0/1 labels (1 = paraphrase) from an MSR Paraphrase / GLUE MRPC TSV; any bad line is an error."""
    pairs, labels, skipped = read_mrpc_lenient(path)
    if skipped:
        raise ValueError(f"{path} line {skipped[0]}: expected 5 tab-separated fields with Quality 0 or 1")
    return pairs, labels


def read_mrpc_lenient(path: Path) -> tuple[list[tuple[str, str]], np.ndarray, list[int]]:
    """Like read_mrpc, but skips malformed lines and returns their numbers (tasks/common/mrpc.py `read`).

    The MSR Paraphrase training file itself has one (line 2124: two records run together),
    so a caller reading real files reports what it skipped rather than refusing the file.
    """
    pairs, labels, skipped = mrpc.read(path)
    return pairs, np.array(labels, dtype=int), skipped


def scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, F1 of the paraphrase class, and the confusion matrix [[tn, fp], [fn, tp]]."""
    tp = int(np.sum((predicted == 1) & (truth == 1)))
    tn = int(np.sum((predicted == 0) & (truth == 0)))
    fp = int(np.sum((predicted == 1) & (truth == 0)))
    fn = int(np.sum((predicted == 0) & (truth == 1)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "pairs": int(truth.size),
        "accuracy": float(np.mean(truth == predicted)) if truth.size else 0.0,
        "f1": f1,
        "confusion": [[tn, fp], [fn, tp]],
    }
