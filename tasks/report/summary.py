"""report: the run directory, summary.json, and the same results as Prefect artifacts.

The artifacts' keys are per deployment (tasks/common/keys.py): `summary-nightly-cpu-embedded`,
`benchmark-adhoc-cpu`. The summary artifact embeds its pictures (the throughput/latency chart and the
latency histogram) as small data-URI PNGs, which the Prefect UI renders; the PNG files stay in the
run directory too. summary.json and the run-config artifact carry the run's provenance
(tasks/report/provenance.py).

Nothing here reads a key: the summary is built from typed results that never hold one.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from tasks.common import keys
from tasks.common.runlog import stage_logger
from tasks.common.versions import package_versions
from tasks.measure import figures
from tasks.measure.buckets import BucketComparison
from tasks.measure.results import BenchmarkResult
from tasks.report.provenance import provenance
from tasks.verify.checks import CheckResult

SUMMARY_FILE = "summary.json"
PICTURES = {
    "throughput and latency": "throughput-latency.png",
    "latency histogram": "latency-histogram.png",
    "capacity search": "capacity.png",
}


def new_run_dir(runs_dir: Path) -> Path:
    """runs/<UTC time>-<id>, with runs/latest pointing at it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    latest = runs_dir / "latest"
    temporary = runs_dir / f".latest-{uuid.uuid4().hex[:6]}"
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, latest)  # atomic: a reader never sees latest missing
    return run_dir


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        **package_versions(
            "torch",
            "transformers",
            "torchserve",
            "torch-model-archiver",
            "prefect",
            "torch-neuronx",
            "neuronx-cc",
            "numpy",
            "pydantic",
            "httpx",
        ),
    }


def host() -> dict:
    """Which machine ran: enough to tell two nightly hosts (or a changed host) apart."""
    import psutil

    return {
        "name": platform.node(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


class StagesRecord(Protocol):
    """How each stage ended (flows/stages.py Stages: flows/ imports tasks/, never the other way)."""

    def failed(self) -> list: ...

    def as_list(self) -> list[dict]: ...


def build_summary(
    stages: StagesRecord,
    checks: list[CheckResult],
    bench: BenchmarkResult | None,
    config: dict,
    extra: dict,
) -> dict:
    failed = stages.failed() or [c for c in checks if not c.passed]
    return {
        "status": "failed" if failed else "ok",
        "stages": stages.as_list(),
        "checks": [c.model_dump(exclude={"predictions"}) for c in checks],
        "benchmark": bench.model_dump() if bench else None,
        "versions": versions(),
        "host": host(),
        "provenance": provenance(config, extra.get("model")),
        "config": config,
        **extra,
    }


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
        except Exception as error:  # a picture is not worth a failed run
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


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def markdown(summary: dict, run_dir: Path) -> str:
    lines = [
        f"# BERT serving validation: **{summary['status']}**",
        "",
        f"Run directory: `{run_dir}`",
        "",
        "| stage | status | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {s['name']} | {s['status']}{' (' + s['reason'] + ')' if s.get('reason') else ''} | {s['seconds']:.1f} |"
        for s in summary["stages"]
    ]
    cache = summary.get("trace") or {}
    if cache.get("cache") in ("hit", "miss"):
        saved = f", {cache['seconds_saved']:.1f} s saved" if cache["cache"] == "hit" else f" ({cache.get('reason')})"
        lines += ["", f"Compile cache: **{cache['cache']}**" + saved]
    errors = [s for s in summary["stages"] if s.get("error")]
    if errors:
        lines += ["", "## Failure", "", f"Stage **{errors[0]['name']}**:", "", "```", errors[0]["error"][-3000:], "```"]
    if summary["checks"]:
        # A list, not a table: the UI keeps a table's cells on one line and cuts a long detail off at its edge.
        lines += ["", "## Checks", ""]
        lines += [
            f"- ✓ {c['name']}: {c['detail']}" if c["passed"] else f"- ✗ **{c['name']}: failed**: {c['detail']}"
            for c in summary["checks"]
        ]
    bench = summary.get("benchmark")
    if bench:
        lines += figures.markdown_lines(bench)
    drawn = summary.get("pictures") or {}
    if drawn:
        lines += [""] + [line for alt, path in drawn.items() for line in (_embedded(alt, path), "")]
        files = [*drawn.values(), *([bench["chart"]] if bench and bench.get("chart") else [])]
        lines.append("In the run directory: " + ", ".join(f"`{Path(path).name}`" for path in files))
    return "\n".join(lines)


def publish_artifacts(
    summary: dict,
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
    bench = summary.get("benchmark")
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


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        return [
            pair for key in sorted(value) for pair in _flatten(f"{prefix}.{key}" if prefix else str(key), value[key])
        ]
    return [(prefix, value)]


def run_config_rows(parameters: dict, summary: dict) -> list[dict]:
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
        ("provenance", summary.get("provenance") or {}),
        ("config", summary.get("config") or {}),
        ("resolved", summary.get("resolved") or {}),
        ("version", summary.get("versions") or {}),
        ("host", summary.get("host") or {}),
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


def publish_run_config(parameters: dict, summary: dict, suffix: str = "adhoc-unknown") -> None:
    """The run's parameters, provenance, resolved configuration, versions and host as a table artifact."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key=keys.key(keys.RUN_CONFIG, suffix),
        table=run_config_rows(parameters, summary),
        description="Parameters, provenance (git commit, dirty?, instance type, compiler "
        "arguments, config hash), resolved configuration, package versions and host",
    )
