"""The MSR Paraphrase / GLUE MRPC TSV format, read in one place: by the accuracy check and the benchmark's
pool (tasks/verify/accuracy.py), and by the configuration, which refuses a file that is not one before
anything starts (tasks/common/config.py) instead of the check stage finding out after trace, archive,
start and register.

    Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String      (line 1, the header)
    1<TAB>702876<TAB>702977<TAB>Amrozi accused his brother ...<TAB>Referring to him ...    (1 = paraphrase)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tasks.common.errors import PipelineError

MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
FIX = (
    "give an MSR Paraphrase / GLUE MRPC file: tab-separated UTF-8 text, line 1 the header "
    + ", ".join(MRPC_HEADER)
    + ", then a line per pair with Quality 0 or 1 "
    "(e.g. ../shared/data/msr_paraphrase_dev.tsv)"
)


# The command that builds the MSR Paraphrase splits from their public sources (docs/data.md).
REBUILD = "python -m tools.mrpc_data --out"


class DataMissing(PipelineError):
    """The MSR Paraphrase split a measurement needs is not on this host."""


def rebuild_hint(folder: Path) -> str:
    return (
        f"build it from the public sources: .venv/bin/python -m tools.mrpc_data --out {folder} (needs internet and "
        "cabextract; docs/data.md), or give another MRPC TSV"
    )


def require(path: Path, measures: str) -> Path:
    """The split at `path`, or DataMissing naming what cannot be measured without it and how to get it."""
    if path.is_file():
        return path
    raise DataMissing(f"{path} does not exist: without it {measures} cannot be measured", fix=rebuild_hint(path.parent))


def read(path: Path) -> tuple[list[tuple[str, str]], list[int], list[int]]:
    """(pairs, 0/1 labels, numbers of the malformed lines skipped). A file that is not MRPC TSV at all -- not
    UTF-8 text, or line 1 not the header -- is a ValueError naming the line.

    Malformed lines after the header are skipped, not refused: the MSR Paraphrase training file itself has
    one (line 2124: two records run together), so a caller reports what it skipped."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not MRPC TSV: line {line} is not UTF-8 text ({error.reason} at byte {error.start})"
        ) from None
    rows = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if header != MRPC_HEADER:
        found = "the file is empty" if header is None else f"found {_shown(header)}"
        raise ValueError(f"{path} is not MRPC TSV: line 1 is not the header {_shown(MRPC_HEADER)}; {found}")
    pairs, labels, skipped = [], [], []
    for line, row in enumerate(rows, 2):
        if len(row) != 5 or row[0] not in ("0", "1"):
            skipped.append(line)
            continue
        labels.append(int(row[0]))
        pairs.append((row[3], row[4]))
    return pairs, labels, skipped


def check(path: Path) -> None:
    """Refuse a file a run could not use: not MRPC TSV (see `read`), or not one pair in it (naming the
    first line that is wrong). Some malformed lines among good ones are the check stage's to report."""
    pairs, _, skipped = read(path)
    if not pairs:
        where = (
            f"line {skipped[0]}: expected 5 tab-separated fields with Quality 0 or 1"
            if skipped
            else "nothing after the header"
        )
        raise ValueError(f"{path} holds no MRPC pair: {where}")


def _shown(fields: list[str]) -> str:
    """A line as its tab-separated fields, cut short: a wrong file's first line may be long."""
    text = " <TAB> ".join(fields)
    return repr(text if len(text) <= 100 else text[:100] + "...")
