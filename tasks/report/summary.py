"""report: the run directory, and the run's results (its RunSummary, tasks/report/run_summary.py) as Prefect
artifacts.

The artifacts' keys are per deployment (tasks/common/keys.py): `summary-nightly-cpu-embedded`,
`benchmark-adhoc-cpu`. The summary artifact embeds its pictures (the throughput/latency chart and the
latency histogram) as small data-URI PNGs, which the Prefect UI renders; the PNG files stay in the
run directory too. The run-config artifact carries the run's provenance (tasks/report/provenance.py).

Nothing here reads a key: the summary is built from typed results that never hold one.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from tasks.common import keys
from tasks.common.runlog import stage_logger
from tasks.measure import figure_text, figures
from tasks.measure.buckets import BucketComparison
from tasks.measure.results import BenchmarkResult
from tasks.report import side_by_side
from tasks.report.run_summary import RunSummary
from tasks.report.side_by_side import SideBySide
from tasks.report.trend import CHART_ERRORS
from tasks.verify.checks import CheckResult

PICTURES = {
    "throughput and latency": "throughput-latency.png",
    "latency histogram": "latency-histogram.png",
    "capacity search": "capacity.png",
}


def new_run_dir(runs_dir: Path) -> Path:
    """runs/<UTC time>-<id>, with runs/latest pointing at it."""
    return make_run_dir(next_run_dir(runs_dir))


def next_run_dir(runs_dir: Path) -> Path:
    """The name of a new run's directory, runs/<UTC time>-<id>; nothing made yet."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return runs_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"


def make_run_dir(run_dir: Path) -> Path:
    """Make a run's directory, and point runs/latest at it."""
    runs_dir = run_dir.parent
    run_dir.mkdir(parents=True)
    latest = runs_dir / "latest"
    temporary = runs_dir / f".latest-{uuid.uuid4().hex[:6]}"
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, latest)  # atomic: a reader never sees latest missing
    return run_dir


def pictures(bench: BenchmarkResult | None, run_dir: Path, log=None) -> dict[str, str]:
    """The summary's small PNGs in the run directory, {alt text: path}: the throughput/latency chart
    (bench.timeline, which only the typed result holds) and the latency histogram. A chart that cannot
    be drawn costs that chart only, and a warning (to `log`, else the run's logger) says which."""
    if bench is None:
        return {}
    log = log or stage_logger(__name__)
    try:
        from tasks.measure.charts import SMALL, capacity_chart, histogram_chart, timeline_chart
    except ImportError as error:
        log.warning("no pictures in the summary: %s (install matplotlib)", error)
        return {}
    drawn = {}
    for alt, draw in (
        ("throughput and latency", lambda path: timeline_chart(bench, path, SMALL) if bench.timeline else None),
        ("latency histogram", lambda path: histogram_chart(bench, path, SMALL)),
        ("capacity search", lambda path: capacity_chart(bench, path, SMALL)),
    ):
        try:
            path = draw(run_dir / PICTURES[alt])
        except CHART_ERRORS as error:  # a picture is not worth a failed run; a bug raises
            log.warning("no %s picture: %s: %s", alt, type(error).__name__, error)
            continue
        if path is not None:
            drawn[alt] = str(path)
    return drawn


def _embedded(alt: str, path: str) -> str:
    from tasks.measure.charts import data_uri

    try:
        return f"![{alt}]({data_uri(Path(path))})"
    except OSError:
        return f"- {alt}: `{path}` (unreadable)"


def markdown(summary: RunSummary, run_dir: Path) -> str:
    lines = [
        f"# BERT serving validation: **{summary.status}**",
        "",
        f"Run directory: `{run_dir}`",
        "",
        "| stage | status | seconds |",
        "|---|---|---|",
    ]
    for stage in summary.stages:
        why = f" ({stage.reason})" if stage.reason else ""
        lines.append(f"| {stage.name} | {stage.status}{why} | {stage.seconds:.1f} |")
    cache = summary.trace
    if cache is not None and cache.cache in ("hit", "miss"):
        saved = f", {cache.seconds_saved or 0:.1f} s saved" if cache.cache == "hit" else f" ({cache.reason})"
        lines += ["", f"Compile cache: **{cache.cache}**" + saved]
    failed = next((s for s in summary.stages if s.error), None)
    if failed is not None:
        lines += ["", "## Failure", "", f"Stage **{failed.name}**:", "", "```", (failed.error or "")[-3000:], "```"]
    if summary.checks:
        # A list, not a table: the UI keeps a table's cells on one line and cuts a long detail off at its edge.
        lines += ["", "## Checks", ""]
        several = len({c.engine for c in summary.checks}) > 1
        for c in summary.checks:
            name = f"{c.name} ({c.engine})" if several else c.name
            lines.append(f"- ✓ {name}: {c.detail}" if c.passed else f"- ✗ **{name}: failed**: {c.detail}")
    bench = summary.benchmark
    if bench:
        lines += figure_text.markdown_lines(bench)
    if summary.pictures:
        lines += [""] + [line for alt, path in summary.pictures.items() for line in (_embedded(alt, path), "")]
        files = [*summary.pictures.values(), *([bench.chart] if bench and bench.chart else [])]
        lines.append("In the run directory: " + ", ".join(f"`{Path(path).name}`" for path in files))
    return "\n".join(lines)


def publish_artifacts(
    summary: RunSummary,
    checks: list[CheckResult],
    run_dir: Path,
    buckets: BucketComparison | None = None,
    suffix: str = "adhoc-unknown",
) -> None:
    """The summary, the predictions, the benchmark, the bucket comparison and the outcome (read back
    by the trend) as artifacts of the flow run, keyed `<kind>-<suffix>`."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.report.trend import outcome_rows

    create_markdown_artifact(
        key=keys.key(keys.SUMMARY, suffix), markdown=markdown(summary, run_dir), description="Run summary"
    )
    create_table_artifact(
        key=keys.key(keys.OUTCOME, suffix),
        table=outcome_rows(summary),
        description="Status, each stage's status and the regressed figures (the trend reads it)",
    )
    rows = [
        {
            "check": c.name,
            "seq_0": p.seq_0[:120],
            "seq_1": p.seq_1[:120],
            "expected": p.expected,
            "answer": p.answer,
            "http": p.status_code,
            "probability": p.probability,
            "truncated": p.truncated,
            "latency_ms": round(p.latency_ms, 1),
        }
        for c in checks
        for p in c.predictions
    ]
    if rows:
        create_table_artifact(
            key=keys.key(keys.PREDICTIONS, suffix), table=rows, description="Predictions from the check stage"
        )
    accuracy = next((c for c in checks if c.name == "accuracy"), None)
    if accuracy is not None:
        (tn, fp), (fn, tp) = accuracy.metrics["confusion"]
        table = [{"figure": k, "value": v} for k, v in accuracy.metrics.items() if k != "confusion"]
        table += [
            {"figure": "true not paraphrase / predicted not paraphrase (tn)", "value": tn},
            {"figure": "true not paraphrase / predicted paraphrase (fp)", "value": fp},
            {"figure": "true paraphrase / predicted not paraphrase (fn)", "value": fn},
            {"figure": "true paraphrase / predicted paraphrase (tp)", "value": tp},
        ]
        create_table_artifact(key=keys.key(keys.ACCURACY, suffix), table=table, description=accuracy.detail)
    bench = summary.benchmark
    if bench:
        create_table_artifact(
            key=keys.key(keys.BENCHMARK, suffix), table=figures.table_rows(bench), description="Benchmark figures"
        )
    if buckets is not None:
        rows = [
            {
                "graphs": f"buckets {buckets.buckets}",
                "inferences_per_s": round(buckets.bucketed_inferences_per_s, 2),
                "p90_ms": round(buckets.bucketed_p90_ms, 1),
            },
            {
                "graphs": f"max_length {buckets.max_length} only",
                "inferences_per_s": round(buckets.single_inferences_per_s, 2),
                "p90_ms": round(buckets.single_p90_ms, 1),
            },
        ]
        create_table_artifact(
            key=keys.key(keys.LENGTH_BUCKETS, suffix),
            table=rows,
            description=f"Same traffic ({buckets.pairs}): {buckets.speedup:.2f}x with buckets; "
            f"labels identical on {buckets.labels_identical}/{buckets.labels_compared} pairs",
        )


def publish_side_by_side(side: SideBySide, suffix: str) -> None:
    """A night of several engines: their figures side by side, and their labels compared (`engines-<suffix>`)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        key=keys.key(keys.ENGINES, suffix),
        markdown="\n".join(side_by_side.markdown_lines(side)),
        description="The engines of one night side by side: the same graph, the same checks and benchmark",
    )


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        return [
            pair for key in sorted(value) for pair in _flatten(f"{prefix}.{key}" if prefix else str(key), value[key])
        ]
    return [(prefix, value)]


def run_config_rows(parameters: dict, summary: RunSummary) -> list[dict]:
    """One row per setting, in a fixed order, so two runs' tables line up side by side:
    the flow's parameters, the run's provenance (git commit and dirty flag, instance type, compiler
    arguments, config hash), the configuration they gave, what `auto` resolved to, package versions
    and the host. Built from the summary and parameters only, which hold no key."""
    sections = [
        (
            "parameter",
            {
                "config_file": parameters.get("config_file") or "none: the defaults",
                "settings": json.dumps(parameters.get("settings") or {}, sort_keys=True, default=str),
                "overrides": json.dumps(parameters.get("overrides") or {}, sort_keys=True, default=str),
            },
        ),
        ("provenance", summary.provenance.model_dump(mode="json")),
        ("config", summary.config.model_dump(mode="json")),
        ("resolved", summary.resolved.model_dump(mode="json")),
        ("version", summary.versions),
        ("host", summary.host.model_dump(mode="json")),
    ]
    return [
        {
            "section": section,
            "name": name,
            "value": value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str),
        }
        for section, values in sections
        for name, value in _flatten("", values)
    ]


def publish_run_config(parameters: dict, summary: RunSummary, suffix: str = "adhoc-unknown") -> None:
    """The run's parameters, provenance, resolved configuration, versions and host as a table artifact."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key=keys.key(keys.RUN_CONFIG, suffix),
        table=run_config_rows(parameters, summary),
        description="Parameters, provenance (git commit, dirty?, instance type, compiler "
        "arguments, config hash), resolved configuration, package versions and host",
    )
