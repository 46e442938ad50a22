"""The engines of one night side by side (serving.engines): the answer to "does the new server give the same
answers, as fast?".

Each engine served the same graph, one after the other, and ran the same checks and benchmark. Here, per engine:
its verdict, inferences/s, client p50 / p99, the capacity at the latency bound, how long its server took to start
and its model to load, its memory, its served / in-process and accuracy; and, across engines, whether every pair
the check stage sent to all of them got the same label from each. A figure an engine lacks is absent (None).
summary.json's `side_by_side` holds it; the `engines-<suffix>` artifact shows it (tasks/report/summary.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.measure.results import BenchmarkResult
from tasks.serve.placement import CoreMap, GpuMap
from tasks.verify.checks import CheckResult

LABEL_DIFFERENCES_SHOWN = 5


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineColumn(_Part):
    """One engine's part of the night."""

    engine: str
    status: Literal["ok", "failed", "interrupted", "skipped"] = Field(
        description="its stages and checks: failed if one failed, skipped if it never started"
    )
    checks_passed: int
    checks: int
    start_s: float | None = Field(None, description="the start stage: the server up and answering, s")
    register_s: float | None = Field(None, description="the register stage: deployed, every worker ready, s")
    benchmark: BenchmarkResult | None = None
    core_map: CoreMap | None = None
    gpu_map: GpuMap | None = None


class LabelsCompared(_Part):
    """Every pair the check stage sent to each engine and each answered (HTTP 200): the same label from all?"""

    pairs: int = Field(description="checked pairs every engine answered")
    equal: int
    differences: list[str] = Field([], description="the first pairs whose labels differ, each engine's label")


class SideBySide(_Part):
    engines: list[EngineColumn]
    labels: LabelsCompared


@dataclass(frozen=True)
class Row:
    """A figure of the side-by-side table: how it is read off an engine's column, and shown."""

    name: str
    read: Callable[[EngineColumn], float | None]
    fmt: str


def _bench(read: Callable[[BenchmarkResult], float | None]) -> Callable[[EngineColumn], float | None]:
    def value(column: EngineColumn) -> float | None:
        found = read(column.benchmark) if column.benchmark is not None else None
        return None if found is None or (isinstance(found, float) and math.isnan(found)) else found

    return value


ROWS = (
    Row("inferences/s", _bench(lambda b: b.inferences_per_s), ".1f"),
    Row("client p50 ms", _bench(lambda b: b.latency_ms.p50), ".0f"),
    Row("client p99 ms", _bench(lambda b: b.latency_ms.p99), ".0f"),
    Row("capacity at the bound, requests/s", _bench(lambda b: b.capacity.rate if b.capacity else None), ".1f"),
    Row("served / in-process", _bench(lambda b: b.served_over_ceiling), ".2f"),
    Row("server start s", lambda c: c.start_s, ".1f"),
    Row("register to ready s", lambda c: c.register_s, ".1f"),
    Row(
        "model load, slowest worker ms", _bench(lambda b: b.model_load.worker_load_ms if b.model_load else None), ".0f"
    ),
    Row("memory peak MiB (RSS)", _bench(lambda b: b.memory.total_rss_mib if b.memory else None), ".0f"),
    Row("accuracy", _bench(lambda b: b.accuracy), ".4f"),
    Row("errors", _bench(lambda b: b.errors), "d"),
)


def labels_compared(checks: Sequence[Sequence[CheckResult]], engines: Sequence[str]) -> LabelsCompared:
    """The label each engine gave every checked pair it answered, pair by pair (a pair is its check and texts)."""
    answered = [
        {(c.name, p.seq_0, p.seq_1): p.answer for c in each for p in c.predictions if p.status_code == 200}
        for each in checks
    ]
    shared = sorted(set.intersection(*(set(a) for a in answered))) if answered else []
    differ = [pair for pair in shared if len({a[pair] for a in answered}) > 1]
    shown = [
        f"{check}: {seq_0[:40]!r} / {seq_1[:40]!r}: "
        + ", ".join(f"{engine} {a[(check, seq_0, seq_1)]!r}" for engine, a in zip(engines, answered, strict=True))
        for check, seq_0, seq_1 in differ[:LABEL_DIFFERENCES_SHOWN]
    ]
    return LabelsCompared(pairs=len(shared), equal=len(shared) - len(differ), differences=shown)


def table_rows(side: SideBySide) -> list[dict]:
    """One row per figure, a column per engine: the side-by-side table artifact."""
    rows: list[dict] = [{"figure": "status", **{c.engine: c.status for c in side.engines}}]
    rows.append({"figure": "checks passed", **{c.engine: f"{c.checks_passed}/{c.checks}" for c in side.engines}})
    for row in ROWS:
        rows.append({"figure": row.name, **{c.engine: _shown(row.read(c), row.fmt) for c in side.engines}})
    return rows


def markdown_lines(side: SideBySide) -> list[str]:
    """The side by side as markdown: the labels' verdict, then the table."""
    labels = side.labels
    verdict = "equal" if labels.equal == labels.pairs else f"**{labels.pairs - labels.equal} differ**"
    lines = [
        "## Engines side by side",
        "",
        f"Labels on the {labels.pairs} checked pairs every engine answered: {verdict} ({labels.equal} equal).",
        *[f"- {line}" for line in labels.differences],
        "",
    ]
    names = [c.engine for c in side.engines]
    lines += ["| figure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += ["| " + " | ".join(str(row[key]) for key in ("figure", *names)) + " |" for row in table_rows(side)]
    return lines


def _shown(value: float | int | None, fmt: str) -> str:
    if value is None:
        return "-"
    return format(int(value), fmt) if fmt == "d" else format(value, fmt)
