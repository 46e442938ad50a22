"""PNG charts of a benchmark (matplotlib, Agg backend: no display needed).

timeline_chart  one run over time: answered requests/s per second, p50/p90 latency, errors, with
                the in-process ceiling drawn as a line.
sweep_chart     one bar per configuration of a sweep: inferences/s, p90 against the latency limit,
                the best configuration under the limit marked.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tasks.measure import figures  # noqa: E402


def timeline_chart(bench, path: Path) -> Path:
    rows = bench.timeline
    figure, throughput = plt.subplots(figsize=(10, 5), dpi=100)
    t = [row["t"] for row in rows]
    throughput.bar(t, [row["requests_per_s"] for row in rows], width=0.9, align="edge", color="#8ab4f8",
                   label="answered requests/s (each s)")
    if bench.ceiling is not None:
        throughput.axhline(bench.ceiling.inferences_per_s, color="#188038", linestyle="--",
                           label=f"in-process ceiling {bench.ceiling.inferences_per_s:.1f} inferences/s")
    errors = [(row["t"], row["errors"]) for row in rows if row["errors"]]
    if errors:
        throughput.scatter([x for x, _ in errors], [n for _, n in errors], color="#d93025", marker="x", label="errors")
    throughput.set_xlabel("s since the end of warm-up")
    throughput.set_ylabel("requests/s")
    latency = throughput.twinx()
    for key, style in (("p50_ms", "-"), ("p90_ms", ":")):
        latency.plot(t, [row[key] for row in rows], style, color="#5f6368", label=key.replace("_ms", " latency"))
    latency.set_ylabel("latency, ms")
    latency.set_ylim(bottom=0)
    handles = throughput.get_legend_handles_labels()
    more = latency.get_legend_handles_labels()
    throughput.legend(handles[0] + more[0], handles[1] + more[1], loc="lower right", fontsize=8)
    throughput.set_title(figures.title(bench), fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def sweep_chart(rows: list[dict], path: Path, p90_limit_ms: float | None) -> Path:
    labels = [row["label"] for row in rows]
    x = range(len(rows))
    figure, throughput = plt.subplots(figsize=(max(8, 0.7 * len(rows) + 3), 5.5), dpi=100)
    colors = ["#188038" if row.get("best") else ("#8ab4f8" if row.get("within_limit") else "#dadce0") for row in rows]
    throughput.bar(x, [row["inferences_per_s"] for row in rows], color=colors)
    ceilings = [row.get("ceiling_inferences_per_s") for row in rows]
    if any(c is not None for c in ceilings):
        throughput.scatter(x, [c if c is not None else math.nan for c in ceilings], marker="_", s=400,
                           color="#188038", label="in-process ceiling")
    throughput.set_ylabel("inferences/s (green: best under the limit; grey: over it)")
    throughput.set_xticks(list(x))
    throughput.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    latency = throughput.twinx()
    latency.plot(list(x), [row["p90_ms"] for row in rows], "o", color="#5f6368", label="p90 latency")
    if p90_limit_ms:
        latency.axhline(p90_limit_ms, color="#d93025", linestyle="--", label=f"p90 limit {p90_limit_ms:g} ms")
    latency.set_ylabel("p90 latency, ms")
    latency.set_ylim(bottom=0)
    handles = throughput.get_legend_handles_labels()
    more = latency.get_legend_handles_labels()
    throughput.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8)
    throughput.set_title("sweep: batch_size / workers / max_batch_delay / concurrency", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
