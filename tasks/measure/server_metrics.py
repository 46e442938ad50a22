"""TorchServe's own account of a load window, from its metric logs (metrics_mode log).

ts_metrics.log     the frontend, per request: ts_queue_latency_microseconds, ts_inference_latency_microseconds,
                   and WorkerThreadTime per batch.
model_metrics.log  the worker, per batch: PredictionTime (TorchServe's service around handle()),
                   HandlerTime (BaseHandler.handle) and, with the handler's @timed profiling on,
                   ts_handler_preprocess / ts_handler_inference / ts_handler_postprocess.

A line: `<ISO time> - Name.Unit:value|#dimensions|#hostname:..,requestID:id,id,..,timestamp:<epoch s>`;
a per-batch line's requestIDs are the batch's requests, which gives the batch fill.

ts_log.log         the frontend's log: when the model was registered ("Model <name> loaded."), when each
                   worker's model was loaded ("State change WORKER_STARTED -> WORKER_MODEL_LOADED", READY),
                   and the worker's own load time (metric WorkerLoadTime, per WorkerName) -- model_load.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import numpy as np

from tasks.measure.loadgen import percentiles
from tasks.measure.results import ModelLoad, ServerTimes, Stat, WorkerLoad

LOG_SETTLE_S = 0.5  # TorchServe writes a request's metrics just after answering it
METRIC_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}) - (\w+)\.(\w+):([-+0-9.eE]+)\|#([^|]*)\|#(.*)$")
# The handler's phases, as TorchServe's @timed names them ("ts_handler_" + the method's name)
PREPROCESS, INFERENCE, POSTPROCESS = "ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess"


def _when(stamp: str, tail: str) -> float:
    """The line's time (s since epoch): its ISO prefix (ms, local time), checked against its
    `timestamp:` field (s, UTC) in case the server ran in another time zone."""
    local = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S,%f").timestamp()
    epoch = re.search(r"timestamp:(\d+)", tail)
    if epoch and abs(int(epoch.group(1)) - local) > 2:
        return int(epoch.group(1)) + local % 1
    return local


def read_metrics(log_dir: Path, since: float, until: float, model_name: str | None = None) -> dict[str, list]:
    """(value, requests in its batch or None) per metric name, logged in [since, until]."""
    found: dict[str, list] = {}
    for name in ("ts_metrics.log", "model_metrics.log"):
        path = log_dir / name
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = METRIC_LINE.match(line)
            if not match:
                continue
            stamp, metric, _unit, value, dims, tail = match.groups()
            if model_name and ("model_name:" in dims or "ModelName:" in dims) and model_name not in dims:
                continue
            if not since <= _when(stamp, tail) <= until:
                continue
            ids = re.search(r"requestID:(.*?),timestamp:", tail)
            found.setdefault(metric, []).append((float(value), len(ids.group(1).split(",")) if ids else None))
    return found


def _stat(values: list[float], scale: float = 1.0) -> Stat | None:
    if not values:
        return None
    summary = percentiles(values, scale)
    return Stat(
        count=len(values),
        p50=summary.p50,
        p90=summary.p90,
        p95=summary.p95,
        p99=summary.p99,
        mean=summary.mean,
        max=summary.max,
    )


def server_times(log_dir: Path, since: float, until: float, model_name: str | None = None) -> ServerTimes:
    metrics = read_metrics(log_dir, since, until, model_name)
    values = {name: [v for v, _ in rows] for name, rows in metrics.items()}
    handler_metric = "HandlerTime" if values.get("HandlerTime") else "PredictionTime"
    per_batch = metrics.get(handler_metric, [])
    fills = [n for _, n in per_batch if n]
    queue = values.get("ts_queue_latency_microseconds")
    notes = []
    if not values.get(INFERENCE):
        notes.append(
            "pre/model/post times: the handler logged no ts_handler_* metrics "
            "(TorchServe's @timed profiling off: model-config.yaml handler.profile)"
        )
    if handler_metric == "PredictionTime":
        notes.append("handler time is TorchServe's PredictionTime: the worker's whole handle() per batch")
    return ServerTimes(
        source=f"{log_dir}/ts_metrics.log, model_metrics.log (metrics_mode log)",
        queue_ms=_stat(queue, 1e-3) if queue else _stat(values.get("QueueTime", [])),
        request_ms=_stat(values.get("ts_inference_latency_microseconds", []), 1e-3),
        handler_ms=_stat(values.get(handler_metric, [])),
        handler_metric=handler_metric if per_batch else None,
        preprocess_ms=_stat(values.get(PREPROCESS, [])),
        model_ms=_stat(values.get(INFERENCE, [])),
        postprocess_ms=_stat(values.get(POSTPROCESS, [])),
        worker_thread_ms=_stat(values.get("WorkerThreadTime", [])),
        batches=len(per_batch),
        mean_batch_fill=float(np.mean(fills)) if fills else None,
        note="; ".join(notes) or None,
    )


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}) ")
WORKER_LOAD_TIME = re.compile(r"WorkerLoadTime\.Milliseconds:([0-9.]+)\|#WorkerName:([^,|]+)")


def model_load(log_dir: Path, model_name: str) -> ModelLoad | None:
    """Per worker of `model_name`: registration -> READY, and TorchServe's WorkerLoadTime; the model's
    last registration counts (a worker restarted later is not a load). None: the log is not there."""
    path = log_dir / "ts_log.log"
    if not path.is_file():
        return None
    worker = re.compile(rf"\b(W-\d+-{re.escape(model_name)}_[\w.]+)\b")
    registered: float | None = None  # s since the epoch
    ready: dict[str, float] = {}  # worker -> s from registration to READY
    load_ms: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        if f"Model {model_name} loaded." in line:
            registered, ready, load_ms = _log_time(stamp.group(1)), {}, {}
        elif registered is None:
            continue
        elif "-> WORKER_MODEL_LOADED" in line and (name := worker.search(line)):
            ready.setdefault(name.group(1), _log_time(stamp.group(1)) - registered)
        elif (metric := WORKER_LOAD_TIME.search(line)) and worker.fullmatch(metric.group(2)):
            load_ms.setdefault(metric.group(2), float(metric.group(1)))
    names = sorted(set(ready) | set(load_ms))
    workers = [
        WorkerLoad(worker=name, register_to_ready_s=ready.get(name), worker_load_ms=load_ms.get(name)) for name in names
    ]
    return ModelLoad(
        workers=workers,
        register_to_ready_s=max(ready.values()) if ready else None,
        worker_load_ms=max(load_ms.values()) if load_ms else None,
    )


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S,%f").timestamp()
