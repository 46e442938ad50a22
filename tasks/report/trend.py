"""The trend artifact: the last runs of one deployment (ad-hoc runs: of one backend), newest first, as a
table and a chart -- a slide over two weeks is seen at a glance instead of by opening 14 runs.

    # Trend: nightly-cpu-embedded
    ![trend](data:image/png;base64,...)
    | run | started | status | stages | inferences/s | p50 / p90 / p99 ms | accuracy |

A row per run, this one first: throughput, client p50/p90/p99, capacity at the latency bound, accuracy,
served / in-process from the
run's benchmark artifact; status, failed stage, each stage's status and the regressed figures from its
outcome artifact (`outcome_rows`, published by every run for this). An earlier run without them --
a crash, a run from before this artifact -- still gets a row from its Prefect state: "stage start
failed: ..." in a Failed state's message names the stage. Earlier runs are read with the regression
history's query (tasks/measure/history.py `earlier_runs`): any parameters, any end state.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from tasks.common import keys
from tasks.common.prefect_api import API_ERRORS
from tasks.common.runlog import stage_logger
from tasks.measure.figures import (
    ACCURACY,
    CAPACITY_RATE,
    INFERENCES_PER_S,
    LATENCY_P50,
    LATENCY_P90,
    LATENCY_P99,
    SERVED_OVER_CEILING,
)
from tasks.report.run_summary import RunSummary

RUNS = 14
# What drawing a chart may raise short of a bug: matplotlib missing, a file that cannot be written, values it
# refuses.
CHART_ERRORS = (ImportError, OSError, ValueError)
FIGURES = {
    "inferences_per_s": INFERENCES_PER_S,
    "p50_ms": LATENCY_P50,
    "p90_ms": LATENCY_P90,
    "p99_ms": LATENCY_P99,
    "accuracy": ACCURACY,
    "served_over_ceiling": SERVED_OVER_CEILING,
    "capacity": CAPACITY_RATE,
}
STAGE_MARK = {"ok": "✓", "failed": "✗", "interrupted": "!", "skipped": "·"}
FAILED_STAGE = re.compile(r"stage (\S+) failed")


# --- this run's outcome, machine-readable ------------------------------------------------------


def outcome_rows(summary: RunSummary) -> list[dict]:
    """The outcome table artifact: {"item", "value"} rows -- status, failed stage, `stage <name>`
    for each stage, regression, `regressed <figure>` for each regressed figure."""
    failed = summary.failed_stages()
    rows: list[dict] = [
        {"item": "status", "value": summary.status},
        {"item": "failed stage", "value": failed[0].name if failed else None},
    ]
    rows += [{"item": f"stage {s.name}", "value": s.status} for s in summary.stages]
    regression = summary.benchmark.regression if summary.benchmark else None
    if regression is not None:
        rows.append({"item": "regression", "value": regression.status})
        rows += [{"item": f"regressed {row.figure}", "value": row.current} for row in regression.table if row.regressed]
    return rows


def _table(data) -> list[dict]:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return []
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


# --- rows ----------------------------------------------------------------------------------------


def row(name: str, started, state: str | None, message: str | None, outcome, benchmark) -> dict:
    """One trend row from a run's name, start, Prefect state (type name, message) and the data of its
    outcome and benchmark artifacts (either may be None)."""
    from tasks.measure.history import figures_of

    rows = _table(outcome) if outcome is not None else []
    items = {item: r.get("value") for r in rows if isinstance(item := r.get("item"), str)}
    figures = figures_of(benchmark) if benchmark is not None else {}
    stages = {item[len("stage ") :]: value for item, value in items.items() if item.startswith("stage ")}
    failed = items.get("failed stage")
    if failed is None and message:
        found = FAILED_STAGE.search(message)
        failed = found.group(1) if found else None
    status = items.get("status") or (state or "unknown").lower()
    return {
        "run": name,
        "started": _when(started),
        "status": "ok" if status == "completed" else status,
        "failed_stage": failed,
        **{column: figures.get(figure.name) for column, figure in FIGURES.items()},
        "stages": stages,
        "regressed": sorted(item[len("regressed ") :] for item in items if item.startswith("regressed ")),
    }


def _when(started) -> str | None:
    if started is None:
        return None
    return started.strftime("%Y-%m-%d %H:%M") if hasattr(started, "strftime") else str(started)[:16]


def row_now(name: str, started, summary: RunSummary) -> dict:
    """This run's row, from its summary (its artifacts are not read back)."""
    from tasks.measure import figures

    bench = summary.benchmark
    return row(name, started, summary.status, None, outcome_rows(summary), figures.table_rows(bench) if bench else None)


def earlier_rows(suffix: str, limit: int = RUNS - 1) -> list[dict]:
    """Rows of this deployment's earlier ended runs, newest first; [] outside a flow run."""
    from tasks.measure.history import earlier_runs

    earlier = (
        earlier_runs((keys.OUTCOME, keys.BENCHMARK), limit, suffix=suffix, completed_only=False, same_parameters=False)
        or []
    )
    return [
        row(
            e.run.name,
            e.run.start_time,
            e.run.state.type.value if e.run.state else None,
            e.run.state.message if e.run.state else None,
            e.artifacts.get(keys.OUTCOME),
            e.artifacts.get(keys.BENCHMARK),
        )
        for e in earlier
    ]


# --- the artifact ----------------------------------------------------------------------------------


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def table(rows: list[dict]) -> list[str]:
    """The markdown table; a regressed figure is bold and marked ▼ (worse), a failed run says where.

    The UI shows the artifact at page width, keeps each cell on one line and cuts off what is wider, so
    the table is kept narrow: what a person scans first -- status (with what regressed), stages -- comes
    before the figures; the three latencies share a cell, as do throughput and its ratio to the in-process
    ceiling; a column no run has a figure for (accuracy without an accuracy file) is left out."""

    def cell(r: dict, column: str, fmt: str) -> str:
        text = _number(r.get(column), fmt)
        return f"**{text} ▼**" if FIGURES[column].name in r["regressed"] and text != "–" else text

    def status(r: dict) -> str:
        text = r["status"] if not r["failed_stage"] else f"{r['status']}: {r['failed_stage']}"
        text = f"**{text}**" if r["status"] != "ok" else text
        return f"{text} · ▼ {', '.join(r['regressed'])}" if r["regressed"] else text

    def throughput(r: dict) -> str:
        ratio = cell(r, "served_over_ceiling", ".2f")
        return cell(r, "inferences_per_s", ".1f") + (f" ({ratio})" if ratio != "–" else "")

    columns = {
        "run": lambda r: r["run"],
        "started": lambda r: r["started"][5:] if r["started"] else "–",
        "status": status,
        "stages": lambda r: "".join(STAGE_MARK.get(s, "?") for s in r["stages"].values()) or "–",
        "inferences/s": throughput,  # (served ÷ in-process), said above the table
        "p50 / p90 / p99 ms": lambda r: " / ".join(cell(r, c, ".0f") for c in ("p50_ms", "p90_ms", "p99_ms")),
    }
    if any(isinstance(r.get("capacity"), (int, float)) for r in rows):
        columns["capacity requests/s"] = lambda r: cell(r, "capacity", ".1f")
    if any(isinstance(r.get("accuracy"), (int, float)) for r in rows):
        columns["accuracy"] = lambda r: cell(r, "accuracy", ".3f")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(render(r) for render in columns.values()) + " |" for r in rows]
    return lines


def markdown(name: str, rows: list[dict], chart_uri: str | None) -> str:
    lines = [f"# Trend: {name}", ""]
    if chart_uri:
        lines += [f"![trend]({chart_uri})", ""]
    lines += [
        f"The last {len(rows)} run{'s' if len(rows) != 1 else ''} of {name}, newest first. Stages "
        f"{' '.join(f'{mark} {status}' for status, mark in STAGE_MARK.items())} in pipeline order; "
        "▼ a figure that regressed against earlier nights; in brackets after inferences/s: served ÷ "
        "in-process (the traced model alone, no server).",
        "",
    ]
    lines += table(rows)
    return "\n".join(lines)


def publish_trend(
    name: str, suffix: str, run_name: str, started, summary: RunSummary, run_dir: Path, log=None
) -> str | None:
    """Publish the trend artifact (`trend-<suffix>`) with this run's row (from its summary) on top;
    returns its markdown. The API's failures are not a failed run: without its history the trend is this run
    alone, a chart that cannot be drawn leaves the table, and an artifact the API refuses is a warning (to `log`,
    else the run's logger). A bug raises. Outside a flow run: nothing to attach it to."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    log = log or stage_logger(__name__)
    now = row_now(run_name, started, summary)
    try:
        rows = [now] + earlier_rows(suffix)
    except API_ERRORS as error:  # an unreadable history: this run alone, and the warning says so
        log.warning(
            "trend: could not read earlier runs (%s: %s): the trend shows this run alone", type(error).__name__, error
        )
        rows = [now]
    rows = rows[:RUNS]
    chart_uri = None
    try:
        from tasks.measure.charts import SMALL, data_uri, trend_chart

        directory = run_dir if run_dir.is_dir() else Path(tempfile.mkdtemp())
        chart_uri = data_uri(trend_chart(rows, directory / "trend.png", SMALL))
    except CHART_ERRORS as error:  # a chart is not worth a lost trend: the table goes out without it
        log.warning("trend: no chart (%s: %s): the trend artifact has the table only", type(error).__name__, error)
    text = markdown(name, rows, chart_uri)
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(
            key=keys.key(keys.TREND, suffix), markdown=text, description=f"The last {len(rows)} runs of {name}"
        )
        return text
    except API_ERRORS as error:  # a trend is not worth a failed run; the warning names what is missing
        log.warning(
            "trend not published (%s: %s): no %s artifact for this run",
            type(error).__name__,
            error,
            keys.key(keys.TREND, suffix),
        )
        return None
