"""One list of figures: the table artifact, the headline, the summary's lines, the chart's title and the
regression's compared figures all come from tasks/measure/figures.py (shown in words by figure_text.py)."""

import json

import pytest

from tasks.measure import figure_text, figures
from tasks.measure import regression as regression_module
from tasks.measure.capacity import Capacity, CapacityStep
from tasks.measure.ceiling import Ceiling, Layout
from tasks.measure.figures import FIGURES, INFERENCES_PER_S, LATENCY_P90
from tasks.measure.history import figures_of
from tasks.measure.loadgen import percentiles
from tasks.measure.regression import compare
from tasks.measure.results import (
    Accelerator,
    BenchmarkResult,
    ClientCapacity,
    CpuUse,
    Memory,
    ModelLoad,
    OpenLoop,
    Regression,
    ServerTimes,
    SingleClient,
    Stat,
    WorkerLoad,
    windows,
)
from tests.nights import night


def full() -> BenchmarkResult:
    """A result with every part measured."""
    layout = Layout(
        name="all threads",
        streams=1,
        threads_per_stream=2,
        batches_per_s=14.0,
        inferences_per_s=84.0,
        batch_latency_ms_p50=70.0,
        batch_latency_ms_mean=71.0,
        batches=40,
        seconds=3.0,
    )
    stat = Stat(count=10, p50=5.0, p90=8.0, mean=6.0)
    return night(
        67.0,
        1.0,
        mode="open",
        rate=70.0,
        first_error="HTTP 503: busy",
        pairs="dev.tsv (408 pairs)",
        fingerprint="abc",
        engine="ray",
        served_over_ceiling=0.8,
        ceiling=Ceiling(
            batch_size=6,
            max_length=128,
            buckets=[40, 128],
            threads=2,
            batches_per_s=14.0,
            inferences_per_s=84.0,
            best_layout="all threads",
            batch_latency_ms=70.0,
            lone_batch_latency_ms=30.0,
            worker_lone_batch_latency_ms=50.0,
            other_cores=0.01,
            windows=3,
            cv=0.12,
            layouts=[layout],
        ),
        client=ClientCapacity(
            requests_per_s=900.0, concurrency=64, seconds=2.0, latency_ms=percentiles([0.01]), over_served=13.4
        ),
        server=ServerTimes(
            source="logs",
            queue_ms=stat,
            request_ms=stat,
            handler_ms=stat,
            handler_metric="HandlerTime",
            preprocess_ms=stat,
            model_ms=stat,
            postprocess_ms=stat,
            worker_thread_ms=stat,
            replica_ms=stat,
            batch_wait_ms=stat,
            batches=300,
            mean_batch_fill=5.5,
        ),
        single_client=SingleClient(
            requests=20,
            seconds=5.0,
            latency_ms=percentiles([0.12]),
            over_batch_latency=1.2,
            over_worker_batch_latency=0.9,
        ),
        capacity=Capacity(
            percentile=99,
            bound_ms=1500,
            rate=52.5,
            failed_rate=56.0,
            start_rate=67.0,
            precision=0.1,
            stopped="within 10%",
            rule="each step at least 5 s and 500 requests",
            steps=[
                CapacityStep(
                    rate=67.0,
                    achieved=60.0,
                    seconds=7.5,
                    requests=500,
                    p50=900.0,
                    p90=1900.0,
                    p99=2500.0,
                    percentile_ms=2500.0,
                    errors=0,
                    dropped=0,
                    passed=False,
                ),
                CapacityStep(
                    rate=52.5,
                    achieved=52.4,
                    seconds=9.5,
                    requests=500,
                    p50=300.0,
                    p90=800.0,
                    p99=1200.0,
                    percentile_ms=1200.0,
                    errors=0,
                    dropped=0,
                    passed=True,
                ),
            ],
        ),
        cpu=CpuUse(
            seconds=30.0,
            host_cores=2,
            workers_cores=1.8,
            frontend_cores=0.1,
            client_cores=0.05,
            other_cores=0.01,
            worker_cpu_ms_per_request=26.0,
            ceiling_cpu_ms_per_inference=23.8,
        ),
        regression=Regression(status="no history", action="warn", tolerance=0.2, message="nothing to compare"),
        open_loop=OpenLoop(
            offered_per_s=70.0, sent_per_s=69.5, achieved_per_s=67.0, late=12, late_after_ms=10.0, dropped=3
        ),
        windows=windows([66.0, 68.0, 67.0], 10.0, 0.1),
        accuracy=0.74,
        model_load=ModelLoad(
            workers=[WorkerLoad(worker="W-9000-m_1.0", register_to_ready_s=6.5, worker_load_ms=6400.0)],
            register_to_ready_s=6.5,
            worker_load_ms=6400.0,
        ),
        memory=Memory(
            samples=30, frontend_rss_mib=300.0, workers_rss_mib=900.0, worker_rss_mib=460.0, total_rss_mib=1200.0
        ),
        accelerator=Accelerator(
            kind="neuron",
            source="neuron-monitor",
            samples=6,
            utilization_pct_mean=37.5,
            utilization_pct_max=40.0,
            per_unit_pct={"4242/0": 37.5},
            device_memory_used_mib=1024.0,
            device_memory_total_mib=32768.0,
        ),
    )


def test_figures_compared_and_filtered_on_keep_the_row_names_of_earlier_nights_artifacts():
    # Earlier nights' table artifacts are read back by these names: renaming one loses the history.
    assert INFERENCES_PER_S.name == "inferences_per_s" and INFERENCES_PER_S.higher_is_better is True
    assert LATENCY_P90.name == "latency_ms p90" and LATENCY_P90.higher_is_better is False
    assert figures.FINGERPRINT.name == "fingerprint"
    assert (figures.CPU_OTHER_CORES.name, figures.CPU_HOST_CORES.name) == ("cpu other_cores", "cpu host_cores")


def test_every_figure_reads_a_fully_measured_result():
    bench = full()
    bench.comparison_unreliable = "the ceiling varied"  # read only when there is something to say
    unread = [f.name for f in FIGURES if f.read(bench) is None]
    assert unread == []  # a renamed field of BenchmarkResult fails here, not silently in tomorrow's table


def test_figure_names_are_unique():
    names = [f.name for f in FIGURES]
    assert len(names) == len(set(names))


def test_table_rows_name_each_figure_and_flatten_the_sections():
    rows = {row["figure"]: row for row in figures.table_rows(full())}
    assert rows["inferences_per_s"]["value"] == 67.0 and rows["inferences_per_s"]["unit"] == "inferences/s"
    assert rows["latency_ms p90"]["value"] == pytest.approx(1000.0)
    assert rows["ceiling inferences_per_s"]["value"] == 84.0 and rows["served_over_ceiling"]["value"] == 0.8
    assert rows["ceiling layout all threads inferences_per_s"]["value"] == 84.0
    assert rows["server queue_ms p50"]["value"] == 5.0 and rows["server mean_batch_fill"]["value"] == 5.5
    assert rows["server model_ms p50"]["value"] == 5.0
    assert rows["fingerprint"]["value"] == "abc" and rows["regression"]["value"] == "no history"


def test_table_rows_leave_out_what_was_not_measured():
    rows = {row["figure"] for row in figures.table_rows(night(20.0, 1.0))}
    assert "inferences_per_s" in rows
    assert not any(name.startswith(("ceiling", "server", "cpu", "client")) for name in rows)
    assert "rate" not in rows and "regression" not in rows


def test_table_rows_turn_nan_into_null():
    bench = night(20.0, 1.0)
    bench.latency_ms = percentiles([])
    rows = figures.table_rows(bench)
    assert {row["figure"]: row["value"] for row in rows}["latency_ms p50"] is None
    json.dumps(rows, allow_nan=False)


def test_a_regression_in_one_figure_read_back_from_figures_own_table_rows_is_flagged_alone():
    # Each earlier night published its table the way the summary does; the API hands back JSON.
    nights = []
    for rss in (1200.0, 1210.0, 1190.0):
        night_ = full()
        night_.memory.total_rss_mib = rss
        nights.append(figures_of(json.dumps(figures.table_rows(night_))))
    tonight = full()
    tonight.memory.total_rss_mib = 1500.0  # a leak: +25 %, everything else as before
    verdict = compare(figures.values(tonight), nights, 0.2, "fail", {"memory total_rss_mib": 0.15})
    assert verdict.failed and verdict.runs == 3
    assert [row.figure for row in verdict.regressed] == ["memory total_rss_mib"]
    assert len(verdict.problems) == 1 and verdict.problems[0].startswith("memory total_rss_mib 1500.0 vs median 1200.0")
    assert len(verdict.table) == len(regression_module.COMPARED)  # every compared figure is in the table
    assert verdict.baseline[INFERENCES_PER_S.name] == pytest.approx(67.0)


def test_values_are_the_table_rows_unrounded():
    bench = full()
    bench.inferences_per_s = 67.123456
    assert figures.values(bench)[INFERENCES_PER_S.name] == 67.123456
    assert figures_of(figures.table_rows(bench))[INFERENCES_PER_S.name] == 67.123


def test_headline_and_chart_title_show_the_figures_with_their_units():
    bench = full()
    headline = figure_text.headline(bench)
    assert headline.startswith(
        "benchmark: 67.0 inferences/s, open loop, concurrency 4, offered 70 requests/s, "
        "achieved 67.0 requests/s, p50 1000 ms, p90 1000 ms, p95 1000 ms"
    )
    assert "served / in-process 0.80" in headline and "model p50 5 ms" in headline
    assert "late 12 requests, dropped 3 requests" in headline and "server RSS 1200 MiB" in headline
    assert (
        figure_text.title(bench) == "67.0 inferences/s, open loop, concurrency 4, p50 1000 ms, p90 1000 ms, "
        "served / in-process 0.80"
    )


def test_a_figure_not_measured_is_left_out_and_nan_reads_n_a():
    bench = night(20.0, 1.0)
    bench.latency_ms = percentiles([])
    assert "served / in-process" not in figure_text.headline(bench)
    assert figure_text.words(LATENCY_P90, bench) == "p90 n/a"


def test_markdown_lines_report_ceiling_client_lone_client_server_warnings_and_regression():
    bench = full()
    bench.warnings = ["the host was busy"]
    text = "\n".join(figure_text.markdown_lines(bench))
    assert "Benchmark: 67.0 inferences/s, open loop, concurrency 4" in text and "errors 0" in text
    assert "**Served / in-process: 0.80**" in text and "load generator / served 13x" in text
    assert "lone client p50 120 ms" in text and "lone p50 / the same batch in-process 1.20x" in text
    assert "preprocess p50 5 ms, preprocess p90 8 ms, model p50 5 ms, model p90 8 ms, model p99" in text
    assert "Throughput per window: window 10 s, windows 3, throughput CV 0.012, stable" in text
    assert (
        "**Worker CPU per request vs in-process per inference: workers per request 26.0 CPU-ms, "
        "in-process per inference 23.8 CPU-ms, workers / in-process 1.092x**" in text
    )
    assert "load to READY 6.5 s, worker's own load 6400 ms" in text and "largest worker 460 MiB" in text
    assert "from neuron, utilisation mean 37.5 %, max 40.0 %, device memory peak 1024 MiB" in text
    assert "accuracy 0.7400" in text and "offered 70 requests/s, sent 69.5 requests/s" in text
    assert "- **Warning**: the host was busy" in text
    assert "Regression check: **no history** — nothing to compare" in text


def test_markdown_lines_of_a_bare_benchmark_have_no_empty_sections():
    lines = figure_text.markdown_lines(night(20.0, 1.0))
    assert [line for line in lines if line] == [
        "Benchmark: 20.0 inferences/s, closed loop, concurrency 4, p50 1000 ms, p90 1000 ms, p99 1000 ms, errors 0",
        "- **MLPerf's scenarios, as measured here: Offline 20.0 inferences/s**",
        "- Latency (client): p50 1000 ms, p90 1000 ms, p95 1000 ms, "
        "p99 1000 ms, max 1000 ms, mean 1000 ms, error rate 0.0%",
    ]


def test_the_summary_names_mlperfs_scenarios_and_tabulates_the_capacity_search():
    closed = full().model_copy(update={"mode": "closed"})
    lines = figure_text.markdown_lines(closed)
    assert (
        "- **MLPerf's scenarios, as measured here: SingleStream p90 120 ms, Offline 67.0 inferences/s, "
        "Server 52.5 requests/s**"
    ) in lines
    assert "| 67.0 | 60.0 | 900 | 1900 | 2500 | 0 | 0 | failed |" in lines
    assert "| 52.5 | 52.4 | 300 | 800 | 1200 | 0 | 0 | **passed** |" in lines
    assert "capacity 52.5 requests/s" in figure_text.headline(closed)
    assert "Offline" not in "\n".join(figure_text.markdown_lines(full()))  # an open loop is not MLPerf's Offline


def test_an_unreliable_served_over_in_process_says_why_beside_the_ratio():
    bench = full()
    bench.comparison_unreliable = "the ceiling varied 12.0% over 3 windows, over the 10% allowed"
    assert (
        "- **Served / in-process: 0.80, the ceiling varied 12.0% over 3 windows, over the 10% allowed**"
        in figure_text.markdown_lines(bench)
    )
    assert "CV over its windows 0.120" in "\n".join(figure_text.markdown_lines(bench))
