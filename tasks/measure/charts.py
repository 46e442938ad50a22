"""PNG charts of a benchmark (matplotlib, Agg backend: no display needed).

timeline_chart  one run over time: answered requests/s per second, p50/p90 latency, errors, with
                the in-process ceiling drawn as a line.
sweep_chart     one bar per configuration of a sweep: inferences/s, p90 against the latency limit,
                the best configuration under the limit marked.
histogram_chart the measured latencies' histogram, p50/p90/p99 marked.
capacity_chart  the capacity search: offered rate against the percentile latency of each step, the bound
                drawn, passing steps marked, the capacity found.
trend_chart     the last runs of one deployment, oldest to newest: inferences/s and p90, regressed and
                failed runs marked.
data_uri        a PNG as a data: URI -- the Prefect UI renders it inside a markdown artifact, so the
                pictures travel with the artifact instead of living only on the worker's disk.

SMALL is the size for pictures embedded in an artifact: tens of KB each.
"""

from __future__ import annotations

import base64
import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tasks.measure import figure_text

SMALL = {"figsize": (6.4, 3.2), "dpi": 72}  # ~460 x 230 px: legible in the UI, ~20-40 KB
LARGE = {"figsize": (10, 5), "dpi": 100}


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def _legend(left, right, loc: str, fontsize: int) -> None:
    """One legend for a chart with two y axes (twinx): each axis keeps only its own handles."""
    (handles, labels), (more, more_labels) = left.get_legend_handles_labels(), right.get_legend_handles_labels()
    left.legend(handles + more, labels + more_labels, loc=loc, fontsize=fontsize)


def timeline_chart(bench, path: Path, size: dict = LARGE) -> Path:
    rows = bench.timeline
    figure, throughput = plt.subplots(**size)
    t = [row["t"] for row in rows]
    throughput.bar(
        t,
        [row["requests_per_s"] for row in rows],
        width=0.9,
        align="edge",
        color="#8ab4f8",
        label="answered requests/s (each s)",
    )
    if bench.measured_ceiling is not None:
        throughput.axhline(
            bench.measured_ceiling.inferences_per_s,
            color="#188038",
            linestyle="--",
            label=f"in-process ceiling {bench.measured_ceiling.inferences_per_s:.1f} inferences/s",
        )
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
    _legend(throughput, latency, "lower right", 8)
    throughput.set_title(figure_text.title(bench), fontsize=10 if size is LARGE else 7, wrap=True)
    return _save(figure, path)


def sweep_chart(rows: list[dict], path: Path, p90_limit_ms: float | None) -> Path:
    labels = [row["label"] for row in rows]
    x = range(len(rows))
    figure, throughput = plt.subplots(figsize=(max(8, 0.7 * len(rows) + 3), 5.5), dpi=100)
    colors = ["#188038" if row.get("best") else ("#8ab4f8" if row.get("within_limit") else "#dadce0") for row in rows]
    throughput.bar(x, [row["inferences_per_s"] for row in rows], color=colors)
    ceilings = [row.get("ceiling_inferences_per_s") for row in rows]
    if any(c is not None for c in ceilings):
        throughput.scatter(
            x,
            [c if c is not None else math.nan for c in ceilings],
            marker="_",
            s=400,
            color="#188038",
            label="in-process ceiling",
        )
    throughput.set_ylabel("inferences/s (green: best under the limit; grey: over it)")
    throughput.set_xticks(list(x))
    throughput.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    latency = throughput.twinx()
    latency.plot(list(x), [row["p90_ms"] for row in rows], "o", color="#5f6368", label="p90 latency")
    if p90_limit_ms:
        latency.axhline(p90_limit_ms, color="#d93025", linestyle="--", label=f"p90 limit {p90_limit_ms:g} ms")
    latency.set_ylabel("p90 latency, ms")
    latency.set_ylim(bottom=0)
    _legend(throughput, latency, "upper left", 8)
    throughput.set_title("sweep: batch_size / workers / max_batch_delay / concurrency", fontsize=10)
    return _save(figure, path)


def histogram_chart(bench, path: Path, size: dict = SMALL) -> Path | None:
    """The latency histogram (bench.histogram: edges_ms, counts), the client's p50/p90/p99 as lines;
    None when the benchmark measured no latencies."""
    histogram = bench.histogram
    if histogram is None or not histogram.counts:
        return None
    edges, counts = histogram.edges_ms, histogram.counts
    figure, axes = plt.subplots(**size)
    axes.bar(
        edges[:-1],
        counts,
        width=[b - a for a, b in itertools.pairwise(edges)],
        align="edge",
        color="#8ab4f8",
        edgecolor="#5f6368",
        linewidth=0.3,
    )
    latency = bench.latency_ms
    for name, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        value = getattr(latency, name, None)
        if value is not None and not math.isnan(value):
            axes.axvline(value, color="#d93025", linestyle=style, linewidth=1, label=f"{name} {value:.0f} ms")
    axes.set_xlabel("latency, ms")
    axes.set_ylabel("requests")
    axes.legend(fontsize=7)
    axes.set_title(f"latency of {sum(counts)} measured requests", fontsize=8)
    return _save(figure, path)


def capacity_chart(bench, path: Path, size: dict = SMALL) -> Path | None:
    """bench.capacity's steps: offered rate (x) against their percentile (y, log scale: a failing step's tail
    can be 100x a passing one's), the bound as a line; None when no search ran."""
    capacity = bench.capacity
    if capacity is None or not capacity.steps:
        return None
    figure, axes = plt.subplots(**size)
    for passed, colour, label in ((True, "#188038", "passed"), (False, "#d93025", "failed")):
        steps = [s for s in capacity.steps if s.passed == passed]
        axes.scatter(
            [s.rate for s in steps],
            [max(s.percentile_ms, 0.1) for s in steps],
            color=colour,
            marker="o" if passed else "x",
            label=f"{label} ({len(steps)})",
            zorder=3,
        )
    axes.axhline(
        capacity.bound_ms, color="#5f6368", linestyle="--", linewidth=1, label=f"bound {capacity.bound_ms:g} ms"
    )
    if capacity.rate is not None:
        axes.axvline(
            capacity.rate, color="#188038", linestyle=":", linewidth=1, label=f"capacity {capacity.rate:.1f} requests/s"
        )
    axes.set_yscale("log")
    axes.set_xlabel("offered rate, requests/s (Poisson arrivals)")
    axes.set_ylabel(f"p{capacity.percentile:g} latency, ms")
    axes.legend(fontsize=7)
    axes.set_title(f"capacity search: {len(capacity.steps)} steps, {capacity.stopped}", fontsize=8)
    return _save(figure, path)


def trend_chart(rows: list[dict], path: Path, size: dict = SMALL) -> Path:
    """rows newest first, as tasks/report/trend.py makes them; drawn oldest to newest. A run without
    figures leaves a gap (a failed run: a red x on the axis); a regressed run's point is red."""
    rows = list(reversed(rows))
    x = list(range(len(rows)))
    figure, throughput = plt.subplots(**size)

    def series(name):
        return [row[name] if isinstance(row.get(name), (int, float)) else math.nan for row in rows]

    rate = series("inferences_per_s")
    throughput.plot(x, rate, "-o", color="#1a73e8", markersize=4, label="inferences/s")
    capacity = series("capacity")
    if not all(math.isnan(value) for value in capacity):
        throughput.plot(x, capacity, "--^", color="#188038", markersize=4, label="capacity requests/s")
    regressed = [i for i, row in enumerate(rows) if row.get("regressed")]
    if regressed:
        throughput.scatter(
            regressed,
            [rate[i] for i in regressed],
            s=60,
            facecolors="none",
            edgecolors="#d93025",
            linewidths=1.5,
            zorder=3,
            label="regressed",
        )
    failed = [i for i, row in enumerate(rows) if row.get("status") not in ("ok", "completed")]
    if failed:
        throughput.scatter(failed, [0] * len(failed), marker="x", color="#d93025", zorder=3, label="not ok")
    throughput.set_ylabel("inferences/s")
    throughput.set_ylim(bottom=0)
    throughput.set_xticks(x)
    # Month-day under each night, upright; with many nights every other one, so the labels stay readable.
    every = 1 if len(rows) <= 7 else 2
    throughput.set_xticklabels(
        [str(row.get("started") or "")[5:10] if i % every == 0 else "" for i, row in enumerate(rows)], fontsize=7
    )
    latency = throughput.twinx()
    latency.plot(x, series("p90_ms"), ":s", color="#5f6368", markersize=3, label="p90 ms")
    latency.set_ylabel("p90 latency, ms")
    latency.set_ylim(bottom=0)
    _legend(throughput, latency, "lower left", 6)
    throughput.set_title(f"last {len(rows)} runs, oldest to newest", fontsize=8)
    return _save(figure, path)
