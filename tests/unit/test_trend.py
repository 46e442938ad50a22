"""The trend artifact from a given history: one row per run, newest first, a failed run's stage named,
regressed figures marked, a chart that decodes as a small PNG; and the outcome a run publishes for it."""

import base64
import re
from datetime import UTC, datetime

from tasks.measure import figures
from tasks.measure.charts import SMALL, data_uri, trend_chart
from tasks.measure.loadgen import percentiles
from tasks.measure.results import BenchmarkResult, Moved, Regression
from tasks.report import trend
from tasks.report.run_summary import RunSummary
from tests.nights import StagesAs, summary

PNG = b"\x89PNG\r\n\x1a\n"


def _bench(rate: float, p90_s: float, regressed: tuple[str, ...] = ()) -> BenchmarkResult:
    bench = BenchmarkResult(
        requests_per_s=rate,
        inferences_per_s=rate,
        latency_ms=percentiles([p90_s] * 10),
        requests=10,
        errors=0,
        concurrency=4,
        seconds=1.0,
        accuracy=0.84,
        served_over_ceiling=0.9,
    )
    bench.regression = Regression(
        status="regressed" if regressed else "ok",
        action="warn",
        tolerance=0.1,
        table=[
            Moved(
                figure=name,
                higher_is_better=True,
                current=rate,
                baseline=rate,
                change=0,
                tolerance=0.1,
                spread=0,
                allowed=1,
                regressed=True,
            )
            for name in regressed
        ],
    )
    return bench


def _summary(status="ok", failed=None, bench=None) -> RunSummary:
    stages = [
        {"name": name, "status": "failed" if name == failed else ("skipped" if failed else "ok"), "seconds": 1.0}
        for name in ("trace", "archive", "start", "benchmark", "stop")
    ]
    if failed:
        stages[0]["status"] = "ok"
    made = summary(StagesAs(stages), bench=bench)
    assert made.status == status  # as the stages say
    return made


def _earlier(name, day, state, message=None, summary=None, bench=None):
    outcome = trend.outcome_rows(summary) if summary else None
    return trend.row(
        name,
        datetime(2026, 11, day, 2, 0, tzinfo=UTC),
        state,
        message,
        outcome,
        figures.table_rows(bench) if bench else None,
    )


def _history() -> list[dict]:
    """Tonight first, then earlier nights newest first: a crash with no artifacts, a regressed night."""
    tonight = trend.row_now("calm-otter", "2026-11-25 02:00", _summary(bench=_bench(18.0, 1.3)))
    return [
        tonight,
        _earlier(
            "brave-lynx",
            24,
            "FAILED",
            "Flow run encountered an exception: StageFailed: stage start failed: TorchServeError: port busy",
        ),
        _earlier(
            "slow-heron",
            23,
            "COMPLETED",
            summary=_summary(bench=_bench(12.0, 2.0, ("inferences_per_s",))),
            bench=_bench(12.0, 2.0, ("inferences_per_s",)),
        ),
        _earlier("fine-crow", 22, "COMPLETED", summary=_summary(bench=_bench(20.0, 1.0)), bench=_bench(20.0, 1.0)),
    ]


def test_rows_carry_the_figures_status_failed_stage_and_regressions():
    rows = _history()
    assert [r["run"] for r in rows] == ["calm-otter", "brave-lynx", "slow-heron", "fine-crow"]
    assert rows[0]["inferences_per_s"] == 18.0 and rows[0]["p90_ms"] == 1300.0 and rows[0]["accuracy"] == 0.84
    assert rows[0]["served_over_ceiling"] == 0.9 and rows[0]["status"] == "ok" and rows[0]["regressed"] == []
    assert rows[1]["status"] == "failed" and rows[1]["failed_stage"] == "start"  # from the state's message
    assert rows[1]["inferences_per_s"] is None and rows[1]["stages"] == {}
    assert rows[2]["regressed"] == ["inferences_per_s"]
    assert rows[3]["started"] == "2026-11-22 02:00" and rows[3]["stages"]["benchmark"] == "ok"


def test_a_failed_stage_is_read_from_the_outcome_first():
    summary = _summary(status="failed", failed="archive")
    row = trend.row("x", None, "FAILED", "stage start failed: not this one", trend.outcome_rows(summary), None)
    assert row["failed_stage"] == "archive" and row["status"] == "failed"
    assert row["stages"] == {
        "trace": "ok",
        "archive": "failed",
        "start": "skipped",
        "benchmark": "skipped",
        "stop": "skipped",
    }


def test_table_lists_each_run_once_newest_first_and_marks_what_slid():
    lines = trend.table(_history())
    body = lines[2:]
    assert [line.split("|")[1].strip() for line in body] == ["calm-otter", "brave-lynx", "slow-heron", "fine-crow"]
    assert "**failed: start**" in body[1] and "✓✓✓✓✓" in body[0]
    assert "**12.0 ▼**" in body[2] and "inferences_per_s" in body[2]
    assert "▼" not in body[0] and "▼" not in body[3]
    assert "| 18.0 (0.90) |" in body[0]  # throughput and its ratio to the in-process ceiling share a cell
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| slow-heron | 11-23 02:00 | ok · ▼ inferences_per_s |" in body[2]  # what slid, by its status
    assert "accuracy" in lines[0]
    without_accuracy = [{**r, "accuracy": None} for r in _history()]
    assert "accuracy" not in trend.table(without_accuracy)[0]  # no run had one: no column of dashes


def test_markdown_has_the_title_a_chart_and_the_table(tmp_path):
    rows = _history()
    text = trend.markdown("nightly-cpu-embedded", rows, data_uri(trend_chart(rows, tmp_path / "t.png", SMALL)))
    assert text.splitlines()[0] == "# Trend: nightly-cpu-embedded"
    png = base64.b64decode(re.search(r"!\[trend\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text).group(1))
    assert png.startswith(PNG) and len(png) < 80_000
    assert "| calm-otter |" in text


def test_one_run_alone_is_a_trend_of_one(tmp_path):
    only = [_history()[0]]
    path = trend_chart(only, tmp_path / "one.png", SMALL)
    assert path.read_bytes().startswith(PNG)
    assert len(trend.table(only)) == 3


def test_outcome_rows_name_each_stage_and_the_regressed_figures():
    summary = _summary(bench=_bench(12.0, 2.0, ("inferences_per_s", "latency_ms p90")))
    items = {r["item"]: r["value"] for r in trend.outcome_rows(summary)}
    assert items["status"] == "ok" and items["failed stage"] is None and items["stage benchmark"] == "ok"
    assert items["regression"] == "regressed"
    assert {"regressed inferences_per_s", "regressed latency_ms p90"} <= set(items)


def test_publish_trend_outside_a_flow_run_publishes_nothing_and_does_not_raise(tmp_path):
    assert trend.publish_trend("adhoc-cpu", "adhoc-cpu", "x", None, _summary(), tmp_path) is None


def test_the_capacity_is_a_column_of_the_trend_a_line_of_its_chart_and_a_fall_is_marked(tmp_path):
    from tasks.measure.capacity import Capacity

    def with_capacity(rate: float, regressed: tuple[str, ...] = ()) -> BenchmarkResult:
        bench = _bench(18.0, 1.3, regressed)
        bench.capacity = Capacity(
            percentile=99,
            bound_ms=1500,
            rate=rate,
            failed_rate=rate * 1.1,
            start_rate=18.0,
            precision=0.1,
            stopped="within 10%",
            rule="",
            steps=[],
        )
        return bench

    fell = with_capacity(9.0, ("capacity rate",))
    rows = [
        trend.row_now("calm-otter", "2026-11-25 02:00", _summary(bench=fell)),
        _earlier("fine-crow", 22, "COMPLETED", summary=_summary(bench=with_capacity(15.0)), bench=with_capacity(15.0)),
    ]
    lines = trend.table(rows)
    assert "capacity requests/s" in lines[0]
    assert "**9.0 ▼**" in lines[2] and "| 15.0 |" in lines[3]
    assert "capacity requests/s" not in trend.table(_history())[0]  # no night searched: no column
    assert trend_chart(rows, tmp_path / "trend.png").read_bytes().startswith(PNG)
