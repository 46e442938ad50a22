"""report: the run directory, summary.json, and the same results as Prefect artifacts.

Nothing here reads a key: the summary is built from typed results that never hold one.
"""

from __future__ import annotations

import json
import os
import platform
import uuid
from datetime import datetime, timezone
from pathlib import Path

from tasks.measure import figures
from tasks.measure.results import BenchmarkResult
from tasks.measure.buckets import BucketComparison
from tasks.verify.checks import CheckResult
from tasks.versions import package_versions

SUMMARY_FILE = "summary.json"


def new_run_dir(runs_dir: Path) -> Path:
    """runs/<UTC time>-<id>, with runs/latest pointing at it."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / f"{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    latest = runs_dir / "latest"
    temporary = runs_dir / f".latest-{uuid.uuid4().hex[:6]}"
    temporary.symlink_to(run_dir.name)
    os.replace(temporary, latest)  # atomic: a reader never sees latest missing
    return run_dir


def versions() -> dict[str, str]:
    return {"python": platform.python_version(),
            **package_versions("torch", "transformers", "torchserve", "torch-model-archiver", "prefect")}


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


def build_summary(
    stages: Stages,
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
        "config": config,
        **extra,
    }


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = run_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def markdown(summary: dict, run_dir: Path) -> str:
    lines = [f"# BERT serving validation: **{summary['status']}**", "", f"Run directory: `{run_dir}`", "",
             "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']}{' (' + s['reason'] + ')' if s.get('reason') else ''} | {s['seconds']:.1f} |"
              for s in summary["stages"]]
    cache = summary.get("trace") or {}
    if cache.get("cache") in ("hit", "miss"):
        lines += ["", f"Compile cache: **{cache['cache']}**" + (f", {cache['seconds_saved']:.1f} s saved"
                                                               if cache["cache"] == "hit" else f" ({cache.get('reason')})")]
    errors = [s for s in summary["stages"] if s.get("error")]
    if errors:
        lines += ["", "## Failure", "", f"Stage **{errors[0]['name']}**:", "", "```", errors[0]["error"][-3000:], "```"]
    if summary["checks"]:
        lines += ["", "| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'yes' if c['passed'] else 'NO'} | {c['detail']} |" for c in summary["checks"]]
    bench = summary.get("benchmark")
    if bench:
        lines += figures.markdown_lines(bench)
    return "\n".join(lines)


def publish_artifacts(summary: dict, checks: list[CheckResult], run_dir: Path,
                      buckets: BucketComparison | None = None) -> None:
    """The summary, the predictions, the benchmark and the bucket comparison as artifacts of the flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(key="summary", markdown=markdown(summary, run_dir), description="Run summary")
    rows = [
        {"check": c.name, "seq_0": p.seq_0[:120], "seq_1": p.seq_1[:120], "expected": p.expected,
         "answer": p.answer, "http": p.status_code, "probability": p.probability, "truncated": p.truncated,
         "latency_ms": round(p.latency_ms, 1)}
        for c in checks for p in c.predictions
    ]
    if rows:
        create_table_artifact(key="predictions", table=rows, description="Predictions from the check stage")
    accuracy = next((c for c in checks if c.name == "accuracy"), None)
    if accuracy is not None:
        (tn, fp), (fn, tp) = accuracy.metrics["confusion"]
        table = [{"figure": k, "value": v} for k, v in accuracy.metrics.items() if k != "confusion"]
        table += [{"figure": "true not paraphrase / predicted not paraphrase (tn)", "value": tn},
                  {"figure": "true not paraphrase / predicted paraphrase (fp)", "value": fp},
                  {"figure": "true paraphrase / predicted not paraphrase (fn)", "value": fn},
                  {"figure": "true paraphrase / predicted paraphrase (tp)", "value": tp}]
        create_table_artifact(key="accuracy", table=table, description=accuracy.detail)
    bench = summary.get("benchmark")
    if bench:
        create_table_artifact(key="benchmark", table=figures.table_rows(bench), description="Benchmark figures")


    if buckets is not None:
        rows = [{"graphs": f"buckets {buckets.buckets}", "inferences_per_s": round(buckets.bucketed_inferences_per_s, 2),
                 "p90_ms": round(buckets.bucketed_p90_ms, 1)},
                {"graphs": f"max_length {buckets.max_length} only",
                 "inferences_per_s": round(buckets.single_inferences_per_s, 2), "p90_ms": round(buckets.single_p90_ms, 1)}]
        create_table_artifact(key="length-buckets", table=rows,
                              description=f"Same traffic ({buckets.pairs}): {buckets.speedup:.2f}x with buckets; labels "
                              f"identical on {buckets.labels_identical}/{buckets.labels_compared} pairs")


RUN_CONFIG_KEY = "run-config"


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    if isinstance(value, dict) and value:
        return [pair for key in sorted(value)
                for pair in _flatten(f"{prefix}.{key}" if prefix else str(key), value[key])]
    return [(prefix, value)]


def run_config_rows(parameters: dict, summary: dict) -> list[dict]:
    """One row per setting, in a fixed order, so two runs' tables line up side by side:
    the flow's parameters, the configuration they gave, what `auto` resolved to, package
    versions and the host. Built from the summary and parameters only, which hold no key."""
    sections = [
        ("parameter", {"config_file": parameters.get("config_file"),
                       "overrides": json.dumps(parameters.get("overrides") or {}, sort_keys=True, default=str)}),
        ("config", summary.get("config") or {}),
        ("resolved", summary.get("resolved") or {}),
        ("version", summary.get("versions") or {}),
        ("host", summary.get("host") or {}),
    ]
    return [
        {"section": section, "name": name,
         "value": value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)}
        for section, values in sections for name, value in _flatten("", values)
    ]


def publish_run_config(parameters: dict, summary: dict) -> None:
    """The run's parameters, resolved configuration, versions and host as a table artifact."""
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=RUN_CONFIG_KEY, table=run_config_rows(parameters, summary),
                          description="Parameters, resolved configuration, package versions and host of this run")
