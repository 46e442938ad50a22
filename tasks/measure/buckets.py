"""Length buckets against the single max_length graph, on the same traffic, in the same run.

The run's .mar carries a graph per bucket. A second registration of the same graphs with
model-config.yaml narrowing the handler to max_length only is the tutorial's way of serving;
the same pool of real pairs is sent to both, one after the other, with the same load settings but
for `compare_seconds` each (after the same warm-up): the benchmark's windows already measured the
served model's steady state; this is a ratio between two registrations measured back to back.
While it runs, a progress artifact and a live terminal line follow it (tasks/common/progress.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from pydantic import BaseModel

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.common.config import RunConfig
from tasks.common.progress import StageProgress
from tasks.common.runlog import Log, stage_logger
from tasks.measure import loadgen
from tasks.prepare.archive import Archive, archive
from tasks.prepare.trace import TracedModel
from tasks.serve.clients import Inference, Prediction
from tasks.serve.register import register, scale, unregister
from tasks.serve.server import Server
from tasks.verify.pairs import load_pool

# Pairs of the pool sent to both registrations to compare labels (after the timed loads).
LABEL_SAMPLE = 60
LABEL_CLIENTS = 16
# About how long the parts other than the loads take (s): the progress's weights, not limits.
REGISTER_S = 10.0  # archive the single-bucket copy, register it, its workers load the graphs (or reload)
LABELS_S = 3.0  # the label sample sent to both


class BucketComparison(BaseModel):
    buckets: list[int]
    max_length: int
    pairs: str
    bucketed_inferences_per_s: float
    single_inferences_per_s: float
    speedup: float
    bucketed_p90_ms: float
    single_p90_ms: float
    seconds_each: float
    labels_compared: int
    labels_identical: int


def _answers(server: Server, model_name: str, pairs: list[tuple[str, str]]) -> list[Prediction]:
    inference = Inference(server, model_name, list(CLASS_NAMES))
    try:
        return inference.send_all([(a, b, "") for a, b in pairs], "bucket comparison", LABEL_CLIENTS)
    finally:
        inference.close()


@contextlib.contextmanager
def _afterwards(undo: Callable[[], object], log: Log) -> Iterator[None]:
    """Run `undo` after the block, also when the block raised; then the block's error is the one raised.
    Not after an interrupt (Ctrl-C, SIGTERM): the stop stage ends the whole server, and promptly."""
    try:
        yield
    except Exception:
        try:
            undo()
        except Exception as error:  # logged, not raised: the block's own error says why the stage failed
            log.warning("compare-buckets: could not undo after the failure: %s", error)
        raise
    undo()


def compare(
    server: Server, bucketed: Archive, traced: TracedModel, config: RunConfig, workers: int, log: Log | None = None
) -> BucketComparison:
    """The compare-buckets stage: the same graphs registered again narrowed to max_length (the
    tutorial's padding), then the same load against both; inferences/s and labels of both.

    One registration holds the workers at a time: the bucketed one is measured, scaled to no workers,
    the single-bucket one registered, measured and dropped, and the bucketed one scaled back. On Neuron
    each worker keeps its NeuronCore until its process exits, so two registrations of `workers` workers
    cannot both load; elsewhere it keeps the idle copy's memory out of the measurement."""
    log = log or stage_logger(__name__)
    info = bucketed.info
    settings = config.benchmark
    single_name = f"{bucketed.model_name}-single-bucket"
    names = (bucketed.model_name, single_name)
    each = settings.warmup + settings.compare_seconds + LABELS_S
    phases = {names[0]: each, "register": REGISTER_S, names[1]: each, "restore": REGISTER_S}
    pairs, pool = load_pool(settings.pairs_file)
    sample = pairs[:LABEL_SAMPLE]
    load = loadgen.Load(
        mode=settings.mode,
        concurrency=settings.concurrency,
        duration=settings.compare_seconds,
        rate=settings.rate if settings.mode == "open" else None,
        warmup=settings.warmup,
    )
    results: dict[str, loadgen.LoadResult] = {}
    labels: dict[str, list[str]] = {}

    def measure(name: str) -> None:
        progress.phase(name, f"load on {name}")
        # The label sample first: it also warms every worker of a fresh registration (a TorchScript graph's
        # first calls are slow), as the benchmark warmed the bucketed one, so the timed loads compare alike.
        labels[name] = [p.answer for p in _answers(server, name, sample)]
        url = f"{server.inference_url}/predictions/{name}"
        watch = loadgen.Watch(settings.progress_every, log, on_progress=progress.load(name))
        results[name] = loadgen.load(url, server.inference_headers(), pairs, load, watch)
        if results[name].errors:
            log.warning("bucket comparison: %d errors from %s", results[name].errors, name)

    def restore() -> None:
        progress.phase("restore", f"{bucketed.model_name} back to {workers} workers")
        scale(server, bucketed.model_name, workers)

    with StageProgress("compare-buckets", phases, log=log) as progress:
        measure(bucketed.model_name)
        progress.phase(
            "register",
            f"{bucketed.model_name}'s workers stopped; registering {single_name} (max_length {info.max_length} only)",
        )
        single = archive(traced, bucketed.model_store, name=single_name, length_buckets=[info.max_length])
        scale(server, bucketed.model_name, 0)
        try:
            with _afterwards(restore, log), _afterwards(lambda: unregister(server, single_name), log):
                register(server, single, config.serving.max_batch_delay, workers)
                measure(single_name)
        finally:  # measured and dropped: its one graph is model/'s max_length graph again, not worth keeping twice
            single.mar_file.unlink(missing_ok=True)
    return _compared(info, pool, results[bucketed.model_name], results[single_name], labels, len(sample), log)


def _compared(
    info: ModelInfo,
    pool: str,
    many: loadgen.LoadResult,
    one: loadgen.LoadResult,
    labels: dict[str, list[str]],
    sampled: int,
    log: Log,
) -> BucketComparison:
    """Both registrations' figures side by side, and how many of the sampled pairs got the same label."""
    identical = sum(a == b for a, b in zip(*labels.values(), strict=True))
    comparison = BucketComparison(
        buckets=info.buckets,
        max_length=info.max_length,
        pairs=pool,
        bucketed_inferences_per_s=many.requests_per_s,
        single_inferences_per_s=one.requests_per_s,
        speedup=many.requests_per_s / one.requests_per_s if one.requests_per_s else 0.0,
        bucketed_p90_ms=many.latency().p90,
        single_p90_ms=one.latency().p90,
        seconds_each=many.seconds,
        labels_compared=sampled,
        labels_identical=identical,
    )
    log.info(
        "length buckets %s: %.1f inferences/s vs %.1f with max_length %d only (%.2fx); p90 %.0f vs %.0f ms; "
        "labels identical on %d/%d pairs",
        info.buckets,
        comparison.bucketed_inferences_per_s,
        comparison.single_inferences_per_s,
        info.max_length,
        comparison.speedup,
        comparison.bucketed_p90_ms,
        comparison.single_p90_ms,
        identical,
        sampled,
    )
    return comparison
