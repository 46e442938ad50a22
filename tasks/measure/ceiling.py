"""The ceiling: what the traced model does on this machine with no server in the way.

The run's own traced graphs (one per length bucket, as model_info.json lists them) are loaded in
this process and called on batches built exactly as the handler builds them -- real pairs from
the benchmark's pool, tokenized by serving.contract.encode_pairs into the smallest bucket that
holds them, filled up to batch_size by pad_to_batch -- so the lengths match what the server ran.
Only the model calls are timed, for a few seconds per thread layout, in `windows` windows taken in turn
(layout A, B, C, then A, B, C again ...), so a slow moment of the host falls on every layout alike and no
layout wins by one lucky stretch; each layout's figure is the median of its windows, and their variation
(std / mean, the CV the load's windows are judged by) says whether the ceiling was steady enough to compare:

  all threads   one stream with workers x threads_per_worker threads (the whole budget)
  as served     `workers` concurrent streams of threads_per_worker threads each (the workers'
                layout; TorchScript releases the GIL, so the streams really overlap)
  one stream per thread   (when workers have several threads each) the layout workers of one
                thread would have

The ceiling is the best of these: the hardware's, not only this server layout's. Then the latency
of one batch alone -- a full batch, and a lone request's batch (one pair padded to batch_size,
what a request with no batch-mates costs) -- with all threads and with one worker's threads.

Call it while TorchServe is idle: its workers then hold memory only, not CPU. It runs in a child
process (tasks/common/child.py), for every backend: on Neuron the process that loads a graph keeps its
NeuronCore until it exits, so the flow process never does. There the child is given a core no process
holds, decided before it starts (tasks/serve/cores.spare_core: the workers' claims and neuron-ls); with
a worker on every core there is none, and the ceiling is reported unavailable, saying so -- as it is when
the runtime refuses the load for any reason, whether torch-neuronx raises or the refusal ends the child
(tasks/common/child.py). It never fails the benchmark on Neuron.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from pydantic import BaseModel

from serving.contract import ModelInfo, encode_pairs, pad_to_batch
from tasks.common import child
from tasks.common.errors import PipelineError
from tasks.common.runlog import stage_logger
from tasks.common.sizing import ResolvedServing
from tasks.measure.loadgen import PairPool
from tasks.serve import cores

WARMUP_CALLS = 2  # TorchScript's profiling executor optimises on the first calls of each graph
MAX_BATCHES = 32  # distinct batches cycled through (lengths vary with the pairs)


class CeilingUnavailable(PipelineError):
    """The ceiling cannot be measured here; the message says why."""


class CeilingError(PipelineError):
    """Measuring the ceiling failed."""


class NoCeiling(BaseModel):
    """What summary.json's benchmark.ceiling holds when the ceiling could not be measured: why."""

    unavailable: str


class Layout(BaseModel):
    name: str
    streams: int
    threads_per_stream: int
    batches_per_s: float
    inferences_per_s: float
    batch_latency_ms_p50: float
    batch_latency_ms_mean: float
    batches: int
    seconds: float
    cpu_ms_per_inference: float | None = None  # this process's CPU time (all its threads) per inference
    window_inferences_per_s: list[float] = []  # one per window, in the order they ran
    cv: float | None = None  # std / mean of the windows: how steady this layout was


class Ceiling(BaseModel):
    batch_size: int
    max_length: int
    buckets: list[int]
    threads: int  # workers x threads_per_worker
    batches_per_s: float
    inferences_per_s: float  # batch_size x batches/s, best layout
    best_layout: str
    batch_latency_ms: float  # p50, one full batch alone, all threads
    lone_batch_latency_ms: float  # p50, one pair padded to batch_size, all threads
    worker_lone_batch_latency_ms: float  # p50, the same with one worker's threads
    other_cores: float | None = None  # CPU the rest of the host used meanwhile: > 0.1 and the ceiling is low
    cpu_ms_per_inference: float | None = None  # measured CPU time per inference in the best layout
    windows: int = 1  # windows per throughput layout, interleaved across the layouts
    cv: float | None = None  # the best layout's windows, std / mean: compared with the load's the same way
    layouts: list[Layout]


def _encode(tokenizer, info: ModelInfo, pairs, buckets):
    inputs, _ = encode_pairs(tokenizer, info.kind, pairs, info.max_length, buckets)
    return pad_to_batch(inputs, info.batch_size)


def load_models(model_dir: Path) -> tuple[dict[int, torch.nn.Module], ModelInfo, torch.device]:
    """{length: graph} as the handler loads them, with the model's facts and the device they run on."""
    info = ModelInfo.read(model_dir)
    if info.backend == "neuron":
        import torch_neuronx  # noqa: F401  in the ceiling's child only: registers the ops the graphs need
    if info.backend == "cuda" and not torch.cuda.is_available():
        raise CeilingUnavailable("backend cuda: no CUDA GPU visible to this process")
    device = torch.device("cuda" if info.backend == "cuda" else "cpu")
    try:
        models = {
            length: torch.jit.load(str(model_dir / name), map_location=device).eval()
            for length, name in info.model_files.items()
        }
    except Exception as error:
        if info.backend != "neuron":
            raise
        # Whatever the runtime says ("could not be initialized", its NRT line is in the log above): the
        # ceiling is a comparison figure, and a core it cannot have must not fail the benchmark.
        core = os.environ.get("NEURON_RT_VISIBLE_CORES", "a free one")
        raise CeilingUnavailable(
            f"backend neuron: the graphs did not load on NeuronCore {core}: {type(error).__name__}: {error}",
            fix="read the runtime's lines above; serve with fewer workers than NeuronCores to leave one spare",
        ) from None
    return models, info, device


def build_batches(model_dir: Path, info: ModelInfo, buckets: list[int], pairs: list[tuple[str, str]]):
    """(full batches of batch_size consecutive pool pairs, lone-request batches of one pair each)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    size = info.batch_size
    pool = PairPool(pairs).pairs  # the order the load generator sends them in
    full = [
        _encode(tokenizer, info, [pool[(i * size + j) % len(pool)] for j in range(size)], buckets)
        for i in range(min(MAX_BATCHES, max(1, len(pool) // size)))
    ]
    lone = [_encode(tokenizer, info, [pool[i % len(pool)]], buckets) for i in range(min(MAX_BATCHES, len(pool)))]
    return full, lone


def _busy() -> tuple[float, float]:
    """(CPU-seconds the whole host has been busy, CPU-seconds of this process)."""
    host, mine = psutil.cpu_times(), psutil.Process().cpu_times()
    return sum(host) - host.idle - getattr(host, "iowait", 0.0), mine.user + mine.system


def _call(models, device, inputs):
    return models[inputs[0].shape[1]](*(t.to(device) for t in inputs))


def _stream(models, device, batches, offset: int, threads: int, stop_at: float, go: threading.Event, out: list) -> None:
    torch.set_num_threads(threads)
    latencies = []
    index = offset
    with torch.inference_mode():
        go.wait()
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            _call(models, device, batches[index % len(batches)])
            if device.type == "cuda":
                torch.cuda.synchronize()
            latencies.append(time.perf_counter() - began)
            index += 1
    out.append(latencies)


def time_layout(
    models,
    device,
    batches,
    name: str,
    streams: int,
    threads: int,
    seconds: float,
    requests_per_batch: int | None = None,
) -> Layout:
    """`streams` threads each calling the graphs with `threads` intra-op threads, for `seconds`.
    requests_per_batch: real requests in each batch (default: all of it; a lone request's: 1)."""
    batch_size = requests_per_batch or int(batches[0][0].shape[0])
    torch.set_num_threads(threads)
    results: list[list[float]] = []
    go = threading.Event()
    cpu_before = _cpu_seconds()
    began = time.perf_counter()
    stop_at = began + seconds
    workers = [
        threading.Thread(
            target=_stream,
            daemon=True,
            args=(models, device, batches, k * len(batches) // streams, threads, stop_at, go, results),
        )
        for k in range(streams)
    ]
    for worker in workers:
        worker.start()
    go.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    cpu_used = _cpu_seconds() - cpu_before
    latencies = np.array([x for stream in results for x in stream]) * 1000
    batches_done = int(latencies.size)
    rate = batches_done / elapsed if elapsed > 0 else 0.0
    return Layout(
        name=name,
        streams=streams,
        threads_per_stream=threads,
        batches_per_s=rate,
        inferences_per_s=rate * batch_size,
        batch_latency_ms_p50=float(np.percentile(latencies, 50)) if batches_done else float("nan"),
        batch_latency_ms_mean=float(latencies.mean()) if batches_done else float("nan"),
        batches=batches_done,
        seconds=elapsed,
        # Measured, not threads / rate: on a busy host the threads wait for CPUs they don't get.
        cpu_ms_per_inference=cpu_used * 1000 / (batches_done * batch_size) if batches_done else None,
    )


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def measure_beside(
    server_dir: Path,
    resolved: ResolvedServing,
    model_dir: Path,
    pairs: list[tuple[str, str]],
    seconds: float,
    windows: int = 1,
) -> Ceiling:
    """The ceiling while a server's workers are registered and idle. On Neuron its child gets a core no
    process holds, named before it starts; with none spare the ceiling is unavailable, saying why."""
    core = None
    if resolved.backend == "neuron":
        try:
            core = cores.spare_core(server_dir, resolved.cores)
        except cores.CoresError as error:
            raise CeilingUnavailable(f"backend neuron: {error.message}", fix=error.fix) from None
    return measure(model_dir, pairs, resolved.initial_workers, resolved.threads_per_worker, seconds, core, windows)


def measure(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    workers: int,
    threads_per_worker: int,
    seconds: float = 3.0,
    neuron_core: int | None = None,
    windows: int = 1,
) -> Ceiling:
    """Time the traced graphs in a child process; the better throughput layout is the ceiling.
    neuron_core: the NeuronCore the child loads on (default: one the runtime picks among the free)."""
    request = {
        "model_dir": str(model_dir),
        "pairs": [list(pair) for pair in pairs],
        "workers": workers,
        "threads_per_worker": threads_per_worker,
        "seconds": seconds,
        "windows": windows,
    }
    env = (
        child.one_core_env()
        if neuron_core is None
        else {**child.without_neuron_runtime_settings(), "NEURON_RT_VISIBLE_CORES": str(neuron_core)}
    )
    result = child.run(
        "tasks.measure.ceiling",
        request,
        CeilingError,
        stage_logger(__name__),
        env=env,
        known=(CeilingUnavailable,),
        refused=CeilingUnavailable,  # a refusal that ends the process is the same verdict as one it reports
    )
    return Ceiling.model_validate(result)


def _measure_request(request: dict) -> dict:
    pairs = [tuple(pair) for pair in request["pairs"]]
    return measure_here(
        Path(request["model_dir"]),
        pairs,
        request["workers"],
        request["threads_per_worker"],
        request["seconds"],
        request.get("windows", 1),
    ).model_dump(mode="json")


def measure_here(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    workers: int,
    threads_per_worker: int,
    seconds: float = 3.0,
    windows: int = 1,
) -> Ceiling:
    """Time the traced graphs in this process (the ceiling's child); the better throughput layout wins.
    seconds: per layout, split into `windows` windows taken in turn across the layouts."""
    previous = torch.get_num_threads()
    total = workers * threads_per_worker
    busy_0, wall_0 = _busy(), time.monotonic()
    try:
        models, info, device = load_models(Path(model_dir))
        buckets = sorted(models)
        full, lone = build_batches(model_dir, info, buckets, pairs)
        torch.set_num_threads(total)
        with torch.inference_mode():
            for batch in {b[0].shape[1]: b for b in full + lone}.values():  # every bucket in use
                for _ in range(WARMUP_CALLS):
                    _call(models, device, batch)
        layouts = throughput_layouts(models, device, full, workers, threads_per_worker, seconds, windows)
        alone = time_layout(models, device, lone, "lone request, all threads", 1, total, seconds / 2, 1)
        worker_alone = (
            alone
            if threads_per_worker == total
            else time_layout(
                models, device, lone, "lone request, one worker's threads", 1, threads_per_worker, seconds / 2, 1
            )
        )
    finally:
        torch.set_num_threads(previous)
    busy_1, wall_1 = _busy(), time.monotonic()
    other = ((busy_1[0] - busy_0[0]) - (busy_1[1] - busy_0[1])) / (wall_1 - wall_0)
    best = max(layouts, key=lambda layout: layout.inferences_per_s)  # throughput layouts only
    return Ceiling(
        batch_size=info.batch_size,
        max_length=info.max_length,
        buckets=buckets,
        threads=total,
        batches_per_s=best.batches_per_s,
        inferences_per_s=best.inferences_per_s,
        best_layout=best.name,
        batch_latency_ms=layouts[0].batch_latency_ms_p50,
        lone_batch_latency_ms=alone.batch_latency_ms_p50,
        worker_lone_batch_latency_ms=worker_alone.batch_latency_ms_p50,
        other_cores=max(0.0, other),
        cpu_ms_per_inference=best.cpu_ms_per_inference,
        windows=windows,
        cv=best.cv,
        layouts=layouts + [alone] + ([worker_alone] if worker_alone is not alone else []),
    )


def throughput_layouts(
    models, device, batches, workers: int, threads_per_worker: int, seconds: float, windows: int
) -> list[Layout]:
    """Each throughput layout timed in `windows` windows of seconds / windows, taken in turn, after a first
    round that is not counted: each layout's first window ran slower than its others (its threads' first turn
    at these shapes; seen here as 73 -> 80 -> 85 inferences/s), which the median of three does not hide."""
    total = workers * threads_per_worker
    shapes = [("all threads", 1, total)]
    if workers > 1:
        shapes.append(("as served", workers, threads_per_worker))
    if threads_per_worker > 1:  # the ceiling is the hardware's, whatever layout this server uses
        shapes.append(("one stream per thread", total, 1))
    timed: dict[str, list[Layout]] = {name: [] for name, _, _ in shapes}
    for _ in range(windows + 1):
        for name, streams, threads in shapes:
            timed[name].append(time_layout(models, device, batches, name, streams, threads, seconds / windows))
    return [combined(parts[1:]) for parts in timed.values()]


def combined(windows: list[Layout]) -> Layout:
    """One layout's windows as one Layout: the median window's throughput, the windows' CV."""
    rates = np.array([w.inferences_per_s for w in windows])
    median = float(np.median(rates))
    per_inference = [w.cpu_ms_per_inference for w in windows if w.cpu_ms_per_inference is not None]
    first = windows[0]
    return Layout(
        name=first.name,
        streams=first.streams,
        threads_per_stream=first.threads_per_stream,
        batches_per_s=median / (first.inferences_per_s / first.batches_per_s) if first.batches_per_s else 0.0,
        inferences_per_s=median,
        batch_latency_ms_p50=float(np.median([w.batch_latency_ms_p50 for w in windows])),
        batch_latency_ms_mean=float(np.mean([w.batch_latency_ms_mean for w in windows])),
        batches=sum(w.batches for w in windows),
        seconds=sum(w.seconds for w in windows),
        cpu_ms_per_inference=float(np.mean(per_inference)) if per_inference else None,
        window_inferences_per_s=[float(r) for r in rates],
        cv=float(rates.std() / rates.mean()) if len(rates) > 1 and rates.mean() > 0 else None,
    )


if __name__ == "__main__":
    child.main(_measure_request)
