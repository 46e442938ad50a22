"""TorchServe's own times of the load window, read from its metric logs (lines in TorchServe's log format)."""

import time
from datetime import datetime

import pytest

from tasks.measure.server_metrics import METRIC_LINE, server_times

MODEL = "bert-max_length128-batch_size6"


def _stamp(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch)
    return moment.strftime("%Y-%m-%dT%H:%M:%S,") + f"{moment.microsecond // 1000:03d}"


def _model_line(t: float, name: str, value: float, requests: list[str], model: str = MODEL) -> str:
    """A worker metric as the frontend writes it to model_metrics.log."""
    return (
        f"{_stamp(t)} - {name}.Milliseconds:{value}|#ModelName:{model},Level:Model|"
        f"#hostname:vm,requestID:{','.join(requests)},timestamp:{int(t)}"
    )


def test_server_times_from_torchserve_metric_logs_inside_the_window(tmp_path):
    now = time.time()
    ts_lines, model_lines = [], []
    for offset, queue_us in ((-30, 9e6), (1, 2000.0), (2, 4000.0), (3, 6000.0)):  # the first is before the window
        t = now + offset
        ts_lines.append(
            f"{_stamp(t)} - ts_queue_latency_microseconds.Microseconds:{queue_us}|#model_name:{MODEL},"
            f"model_version:default|#hostname:vm,timestamp:{int(t)}"
        )
        ts_lines.append(
            f"{_stamp(t)} - ts_inference_latency_microseconds.Microseconds:{queue_us + 100000}|"
            f"#model_name:{MODEL},model_version:default|#hostname:vm,timestamp:{int(t)}"
        )
        ts_lines.append(f"{_stamp(t)} - WorkerThreadTime.Milliseconds:3.0|#Level:Host|#hostname:vm,timestamp:{int(t)}")
        model_lines.append(_model_line(t, "PredictionTime", 100 + offset, ["a", "b", "c"] + ["d"] * (offset > 1)))
    model_lines.append(_model_line(now + 2, "PredictionTime", 999, ["x"], model="other-model"))
    (tmp_path / "ts_metrics.log").write_text("\n".join(ts_lines) + "\n")
    (tmp_path / "model_metrics.log").write_text("\n".join(model_lines) + "\n")
    times = server_times(tmp_path, now, now + 10, MODEL)
    assert times.queue_ms.count == 3 and times.queue_ms.p50 == pytest.approx(4.0)
    assert times.request_ms.p50 == pytest.approx(104.0)
    assert times.handler_metric == "PredictionTime" and times.handler_ms.p50 == pytest.approx(102.0)
    assert times.batches == 3 and times.mean_batch_fill == pytest.approx(11 / 3)
    assert times.worker_thread_ms.mean == pytest.approx(3.0)
    assert times.model_ms is None and "ts_handler" in times.note and "PredictionTime" in times.note


def test_the_handlers_profiled_phases_are_pre_model_and_post_times_per_batch(tmp_path):
    # BaseHandler.handle logs HandlerTime; @timed with handler.profile logs ts_handler_<method> per batch.
    now = time.time()
    lines = []
    for offset, (pre, model, post) in enumerate(((4.0, 60.0, 1.0), (6.0, 80.0, 2.0), (5.0, 70.0, 3.0)), start=1):
        t, batch = now + offset, [f"req-{offset}-{i}" for i in range(6)]
        lines += [
            _model_line(t, "ts_handler_preprocess", pre, batch),
            _model_line(t, "ts_handler_inference", model, batch),
            _model_line(t, "ts_handler_postprocess", post, batch),
            _model_line(t, "HandlerTime", pre + model + post + 0.5, batch),
            _model_line(t, "PredictionTime", pre + model + post + 1.0, batch),
        ]
    (tmp_path / "model_metrics.log").write_text("\n".join(lines) + "\n")
    assert all(METRIC_LINE.match(line) for line in lines)
    times = server_times(tmp_path, now, now + 10, MODEL)
    assert times.preprocess_ms.p50 == pytest.approx(5.0) and times.preprocess_ms.count == 3
    assert times.model_ms.p50 == pytest.approx(70.0) and times.model_ms.mean == pytest.approx(70.0)
    assert times.postprocess_ms.p50 == pytest.approx(2.0)
    assert times.handler_metric == "HandlerTime" and times.handler_ms.p50 == pytest.approx(78.5)
    assert times.batches == 3 and times.mean_batch_fill == pytest.approx(6.0)
    assert times.note is None  # nothing missing to explain


def test_server_times_with_no_logs_is_empty_not_an_error(tmp_path):
    times = server_times(tmp_path, 0, time.time())
    assert times.batches == 0 and times.queue_ms is None and times.handler_ms is None and times.model_ms is None


def test_a_server_in_another_time_zone_is_placed_by_its_epoch_timestamp(tmp_path):
    now = time.time()
    shifted = _model_line(now + 1, "HandlerTime", 50.0, ["a"]).replace(_stamp(now + 1), _stamp(now + 1 - 3 * 3600))
    (tmp_path / "model_metrics.log").write_text(shifted + "\n")
    assert server_times(tmp_path, now, now + 10, MODEL).handler_ms.count == 1


def test_model_load_per_worker_from_torchserve_log(tmp_path):
    from tasks.measure.server_metrics import model_load

    def line(t: str, text: str) -> str:
        return f"2026-11-25T12:39:{t} [INFO ] W-9000 org.pytorch.serve.wlm.WorkerThread - {text}"

    lines = [
        line("30,000", f"Model {MODEL} loaded."),  # an earlier registration (reconciled): replaced below
        line("40,000", f"Model {MODEL} loaded."),
        line("40,100", f"Model {MODEL}-single-bucket loaded."),  # another model: not ours
        line("45,000", f"W-9000-{MODEL}_1.0 State change WORKER_STARTED -> WORKER_MODEL_LOADED"),
        line("45,000", f"W-9000-{MODEL}_1.0 State change WORKER_STARTED -> WORKER_MODEL_LOADED"),  # logged twice
        line("46,500", f"W-9001-{MODEL}_1.0 State change WORKER_STARTED -> WORKER_MODEL_LOADED"),
        line("46,600", f"W-9002-{MODEL}-single-bucket_1.0 State change WORKER_STARTED -> WORKER_MODEL_LOADED"),
        line(
            "45,001",
            f"TS_METRICS - WorkerLoadTime.Milliseconds:4990.0|#WorkerName:W-9000-{MODEL}_1.0,Level:Host|"
            "#hostname:vm,timestamp:1795610393",
        ),
        line(
            "46,501",
            f"TS_METRICS - WorkerLoadTime.Milliseconds:6480.0|#WorkerName:W-9001-{MODEL}_1.0,Level:Host|"
            "#hostname:vm,timestamp:1795610393",
        ),
    ]
    (tmp_path / "ts_log.log").write_text("\n".join(lines) + "\n")
    load = model_load(tmp_path, MODEL)
    assert [w.worker for w in load.workers] == [f"W-9000-{MODEL}_1.0", f"W-9001-{MODEL}_1.0"]
    assert [w.register_to_ready_s for w in load.workers] == [pytest.approx(5.0), pytest.approx(6.5)]
    assert [w.worker_load_ms for w in load.workers] == [4990.0, 6480.0]
    assert load.register_to_ready_s == pytest.approx(6.5) and load.worker_load_ms == 6480.0
    assert model_load(tmp_path / "nowhere", MODEL) is None
