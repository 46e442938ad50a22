"""The pairs a run sends: the tutorial's sentences, the golden pairs, and pools of real pairs."""

from __future__ import annotations

from pathlib import Path

import yaml

from serving.contract import CLASS_NAMES
from tasks.common import mrpc
from tasks.common.config import GOLDEN_PAIRS_FILE, MRPC_DEV_FILE

# The tutorial's three sentences.
SEQUENCE_0 = "The company HuggingFace is based in New York City"
SEQUENCE_1 = "Apples are especially bad for your health"
SEQUENCE_2 = "HuggingFace's headquarters are situated in Manhattan"
PARAPHRASE = (SEQUENCE_0, SEQUENCE_2, "paraphrase")
NOT_PARAPHRASE = (SEQUENCE_0, SEQUENCE_1, "not paraphrase")
# Far over any max_length: the truncation check's pair.
LONG_TEXT = " ".join(["The committee reviewed the proposal in detail and asked for revisions."] * 60)


def load_golden(path: Path) -> list[tuple[str, str, str]]:
    """(seq_0, seq_1, label) from a golden-pairs YAML (configs/golden_pairs.yaml)."""
    rows = yaml.safe_load(path.read_text())
    pairs = []
    for number, row in enumerate(rows, 1):
        if row.get("label") not in CLASS_NAMES or not row.get("seq_0") or not row.get("seq_1"):
            raise ValueError(f"{path} entry {number}: needs seq_0, seq_1 and label 'paraphrase' or 'not paraphrase'")
        pairs.append((row["seq_0"], row["seq_1"], row["label"]))
    return pairs


def load_pool(path: Path | None) -> tuple[list[tuple[str, str]], str]:
    """Real pairs to send, and what they are: an MRPC TSV or a golden-pairs YAML (benchmark.pairs_file, checked
    to exist before anything starts). None: the MRPC dev split where this checkout has ../shared/data, else the
    golden pairs. A pool with no pair in it falls back to the tutorial's two."""
    from tasks.verify.accuracy import read_mrpc_lenient

    if path is None:
        path = MRPC_DEV_FILE if MRPC_DEV_FILE.is_file() else GOLDEN_PAIRS_FILE
    if path.suffix.lower() in (".yaml", ".yml"):
        pairs = [(a, b) for a, b, _ in load_golden(path)]
    else:
        pairs = read_mrpc_lenient(path)[0]
    if not pairs:
        pairs = [PARAPHRASE[:2], NOT_PARAPHRASE[:2]]
    return pairs, f"{path.name} ({len(pairs)} pairs)"


def missing_dev_split() -> str | None:
    """Where benchmark.pairs_file is null and the MSR Paraphrase dev split is not on this host: what the load cannot
    measure without it, and how to get it (None when it is there)."""
    if MRPC_DEV_FILE.is_file():
        return None
    get_it = mrpc.rebuild_hint(MRPC_DEV_FILE.parent)
    return (
        f"the MSR Paraphrase dev split is not at {MRPC_DEV_FILE}: the load sends the golden pairs "
        f"({GOLDEN_PAIRS_FILE.name}) instead, too few and too alike to measure real traffic's mix of lengths, so "
        f"tonight's figures do not compare with nights measured on the dev split; {get_it}"
    )
