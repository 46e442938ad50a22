import math

import pytest

from tasks.measure.benchmark import summarize


def test_rates_and_percentiles():
    latencies = [i / 10 for i in range(1, 11)]  # 0.1 .. 1.0 s
    result = summarize(latencies, errors=0, concurrency=4, seconds=10.0)
    assert result.requests_per_s == pytest.approx(1.0)
    assert result.inferences_per_s == pytest.approx(1.0)
    assert result.latency_ms.p50 == pytest.approx(550.0)
    assert result.latency_ms.mean == pytest.approx(550.0)
    assert 900.0 <= result.latency_ms.p90 <= result.latency_ms.p99 <= 1000.0
    assert result.requests == 10 and result.errors == 0
    assert result.concurrency == 4 and result.seconds == 10.0


def test_errors_count_as_requests_but_not_throughput():
    result = summarize([0.2] * 20, errors=5, concurrency=2, seconds=4.0)
    assert result.requests == 25
    assert result.errors == 5
    assert result.requests_per_s == pytest.approx(5.0)
    assert result.latency_ms.p50 == pytest.approx(200.0)


def test_no_answers_gives_nan_latency_and_zero_rate():
    result = summarize([], errors=7, concurrency=8, seconds=10.0)
    assert result.requests_per_s == 0.0
    assert result.requests == 7
    for value in (result.latency_ms.p50, result.latency_ms.p90, result.latency_ms.p99, result.latency_ms.mean):
        assert math.isnan(value)


def test_zero_seconds_does_not_divide_by_zero():
    result = summarize([0.1], errors=0, concurrency=1, seconds=0.0)
    assert result.requests_per_s == 0.0


# --- the wider result: error rate, max, the table artifact, the pool, TorchServe's metric logs ---

import json  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402

from tasks.measure import benchmark as bench_module  # noqa: E402
from tasks.config import load_config, resolve_serving  # noqa: E402


def test_error_rate_and_max_latency_alongside_the_existing_keys():
    result = summarize([0.1, 0.3], errors=2, concurrency=3, seconds=1.0)
    assert result.error_rate == pytest.approx(0.5)
    assert result.latency_ms.max == pytest.approx(300.0)
    dumped = result.model_dump()
    assert {"requests_per_s", "inferences_per_s", "latency_ms", "errors", "concurrency", "seconds",
            "requests"} <= set(dumped)
    assert {"p50", "p90", "p99", "mean"} <= set(dumped["latency_ms"])
    assert "timeline" not in dumped  # benchmark.json only


def test_table_rows_keep_their_names_and_flatten_sections():
    result = summarize([0.1, 0.2], 0, 4, 2.0).model_dump()
    result["ceiling"] = {"inferences_per_s": 80.0, "threads": 2, "best_layout": "as served",
                         "layouts": [{"name": "all threads", "inferences_per_s": 70.0}]}
    result["served_over_ceiling"] = 0.9
    result["server"] = {"queue_ms": {"count": 3, "p50": 1.5, "p90": 2.0, "mean": 1.6}, "mean_batch_fill": 5.5,
                        "model_ms": None}
    result["regression"] = {"status": "ok"}
    result["fingerprint"] = "abc"
    rows = {row["figure"]: row["value"] for row in bench_module.table_rows(result)}
    assert rows["requests_per_s"] == 1.0 and rows["latency_ms p90"] == pytest.approx(190.0)
    assert rows["ceiling inferences_per_s"] == 80.0 and rows["served_over_ceiling"] == 0.9
    assert rows["ceiling layout all threads inferences_per_s"] == 70.0
    assert rows["server queue_ms p50"] == 1.5 and rows["server mean_batch_fill"] == 5.5
    assert rows["fingerprint"] == "abc" and rows["regression"] == "ok"
    assert "server model_ms" not in rows


def test_table_rows_turn_nan_into_null():
    rows = {row["figure"]: row["value"] for row in bench_module.table_rows(summarize([], 3, 1, 1.0).model_dump())}
    assert rows["latency_ms p50"] is None
    json.dumps(rows, allow_nan=False)


def test_pool_is_the_mrpc_dev_split_when_present_else_golden_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_module, "DEFAULT_PAIRS_FILE", tmp_path / "missing.tsv")
    pairs, described = bench_module.load_pool(None)
    assert described.startswith("golden_pairs.yaml") and len(pairs) >= 10
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA cat.\tA feline.\n0\t3\t4\tRain.\tSun.\n")
    monkeypatch.setattr(bench_module, "DEFAULT_PAIRS_FILE", tsv)
    pairs, described = bench_module.load_pool(None)
    assert pairs == [("A cat.", "A feline."), ("Rain.", "Sun.")] and described == "dev.tsv (2 pairs)"
    assert bench_module.load_pool(tsv)[0] == pairs


def test_missing_pool_file_is_a_clear_error(tmp_path):
    with pytest.raises(bench_module.BenchmarkError, match="pairs_file"):
        bench_module.load_pool(tmp_path / "nope.tsv")


def _stamp(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch)
    return moment.strftime("%Y-%m-%dT%H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


def test_server_times_from_torchserve_metric_logs_inside_the_window(tmp_path):
    now = time.time()
    model = "bert-max_length128-batch_size6"
    ts_lines, model_lines = [], []
    for offset, queue_us in ((-30, 9e6), (1, 2000.0), (2, 4000.0), (3, 6000.0)):  # the first is before the window
        t = now + offset
        ts_lines.append(f"{_stamp(t)} - ts_queue_latency_microseconds.Microseconds:{queue_us}|#model_name:{model},"
                        f"model_version:default|#hostname:vm,timestamp:{int(t)}")
        ts_lines.append(f"{_stamp(t)} - ts_inference_latency_microseconds.Microseconds:{queue_us + 100000}|"
                        f"#model_name:{model},model_version:default|#hostname:vm,timestamp:{int(t)}")
        ts_lines.append(f"{_stamp(t)} - WorkerThreadTime.Milliseconds:3.0|#Level:Host|#hostname:vm,timestamp:{int(t)}")
        model_lines.append(f"{_stamp(t)} - PredictionTime.ms:{100 + offset}|#ModelName:{model},Level:Model|"
                           f"#hostname:vm,requestID:a,b,c{',d' * (offset > 1)},timestamp:{int(t)}")
    model_lines.append(f"{_stamp(now + 2)} - PredictionTime.ms:999|#ModelName:other-model,Level:Model|"
                       f"#hostname:vm,requestID:x,timestamp:{int(now + 2)}")
    (tmp_path / "ts_metrics.log").write_text("\n".join(ts_lines) + "\n")
    (tmp_path / "model_metrics.log").write_text("\n".join(model_lines) + "\n")
    times = bench_module.server_times(tmp_path, now, now + 10, model)
    assert times.queue_ms.count == 3 and times.queue_ms.p50 == pytest.approx(4.0)
    assert times.request_ms.p50 == pytest.approx(104.0)
    assert times.handler_metric == "PredictionTime" and times.handler_ms.p50 == pytest.approx(102.0)
    assert times.batches == 3 and times.mean_batch_fill == pytest.approx(11 / 3)
    assert times.worker_thread_ms.mean == pytest.approx(3.0)
    assert times.model_ms is None and "ModelTime" in times.note


def test_server_times_with_no_logs_is_empty_not_an_error(tmp_path):
    times = bench_module.server_times(tmp_path, 0, time.time())
    assert times.batches == 0 and times.queue_ms is None and times.handler_ms is None


def test_fingerprint_ignores_ports_and_log_cadence_but_not_batching():
    base = load_config()
    resolved = resolve_serving(base.serving)
    same = load_config(None, {"serving.free_ports": True, "serving.inference_port": 9999,
                              "benchmark.progress_every": 1, "benchmark.regression_action": "fail"})
    other = load_config(None, {"serving.max_batch_delay": 7})
    assert bench_module.fingerprint(base, resolved) == bench_module.fingerprint(same, resolved)
    assert bench_module.fingerprint(base, resolved) != bench_module.fingerprint(other, resolved)


def test_markdown_lines_report_ceiling_client_lone_client_and_regression():
    result = summarize([0.1], 0, 64, 1.0).model_dump()
    result.update(
        ceiling={"threads": 2, "best_layout": "as served", "inferences_per_s": 50.0, "batch_latency_ms": 90.0},
        served_over_ceiling=0.93,
        client={"requests_per_s": 900.0, "over_served": 45.0},
        single_client={"latency_ms": {"p50": 120.0}, "over_batch_latency": 1.2, "over_worker_batch_latency": 0.9},
        regression={"status": "no history", "message": "nothing to compare"},
    )
    text = "\n".join(bench_module.markdown_lines(result))
    assert "Served / in-process: 0.93" in text and "45x" in text
    assert "p50 120 ms = 1.20x" in text and "no history" in text


def test_cpu_use_splits_the_load_window_by_process_role():
    from types import SimpleNamespace

    import psutil

    from tasks.serve.server import ProcessRef

    server = SimpleNamespace(processes=[ProcessRef.of(psutil.Process())])
    before = bench_module.cpu_snapshot(server)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass  # burn this process's CPU
    after = bench_module.cpu_snapshot(server)
    use = bench_module.cpu_use(before, after, requests=10, ceiling=None)
    assert 0.2 <= use.seconds <= 2 and use.host_cores >= 1
    assert use.client_cores > 0.5  # this process, busy
    assert use.workers_cores == 0 and use.other_cores >= 0
    assert use.worker_cpu_ms_per_request == 0 and use.ceiling_cpu_ms_per_inference is None


def test_a_busy_host_is_called_out():
    import psutil

    cores = psutil.cpu_count()
    quiet = {"cpu": {"other_cores": 0.01}, "ceiling": {"other_cores": 0.0}}
    busy = {"cpu": {"other_cores": 0.5 * cores}, "ceiling": {"other_cores": 0.9 * cores}}
    assert bench_module.busy_host_warnings(quiet) == []
    warnings = bench_module.busy_host_warnings(busy)
    assert len(warnings) == 2 and "during the load" in warnings[0] and "ceiling" in warnings[1]
