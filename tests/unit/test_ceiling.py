"""The in-process ceiling on a tiny traced stand-in: batches built as the handler builds them.

It runs here, in this process (measure_here: what the ceiling's child runs), on a clock that moves 1 ms at
each reading, so a layout timed for `seconds` makes a set number of calls whatever the host's speed, and no
test waits for a layout's seconds. measure's own side (the request it hands the child) is tested with the child
run in this process; the real child runs in tests/unit/test_neuron.py, and child processes' errors in
tests/unit/test_child.py."""

import shutil
import threading

import numpy as np
import pytest
import torch

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.common import child
from tasks.measure import ceiling

PAIRS = [
    ("A cat sat on the mat.", "A cat was sitting on the mat."),
    ("The committee reviewed the long proposal in great detail and asked for revisions.", "Rain."),
    ("How old are you?", "What is your age?"),
] * 4


class Tiny(torch.nn.Module):
    def forward(self, ids_0, mask_0, ids_1, mask_1):
        score = (ids_0 * mask_0).float().mean(1) - (ids_1 * mask_1).float().mean(1)
        return torch.stack([-score, score], dim=-1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """The traced graphs, once for the module: the tests only read them."""
    path = tmp_path_factory.mktemp("model")
    files = {}
    for length in (8, 16):
        example = (torch.ones(2, length, dtype=torch.long),) * 4
        files[length] = f"model_{length}.pt"
        torch.jit.save(torch.jit.trace(Tiny(), example), str(path / files[length]))
    tokenizer.save_pretrained(str(path))
    ModelInfo(
        kind="bi-encoder",
        backend="cpu",
        batch_size=2,
        max_length=16,
        buckets=[8, 16],
        model_files=files,
        class_names=list(CLASS_NAMES),
        source="test",
        parity_max_abs_diff=0.0,
    ).write(path)
    return path


class Ticking:
    """The ceiling's clock: each reading is 1 ms after the last, from any thread. And the process's CPU time:
    10 ms more at each reading."""

    def __init__(self):
        self.now, self.cpu, self._lock = 0.0, 0.0, threading.Lock()

    def perf_counter(self) -> float:
        with self._lock:
            self.now += 0.001
            return self.now

    monotonic = perf_counter

    def cpu_seconds(self) -> float:
        with self._lock:
            self.cpu += 0.01
            return self.cpu


@pytest.fixture
def clock(monkeypatch):
    ticking = Ticking()
    monkeypatch.setattr(ceiling, "time", ticking)
    monkeypatch.setattr(ceiling, "_cpu_seconds", ticking.cpu_seconds)
    return ticking


def test_ceiling_times_the_buckets_the_pairs_need_in_each_layout(model_dir, clock):
    before = torch.get_num_threads()
    result = ceiling.measure_here(model_dir, PAIRS, workers=2, threads_per_worker=1, seconds=0.3)
    assert torch.get_num_threads() == before  # the process's threads are given back
    assert result.batch_size == 2 and result.buckets == [8, 16] and result.threads == 2
    names = [layout.name for layout in result.layouts]
    assert names == ["all threads", "as served", "lone request, all threads", "lone request, one worker's threads"]
    best = max(result.layouts[:2], key=lambda layout: layout.inferences_per_s)
    assert result.best_layout == best.name and result.inferences_per_s == best.inferences_per_s
    assert result.inferences_per_s == pytest.approx(2 * result.batches_per_s)
    assert result.layouts[1].streams == 2 and result.layouts[1].threads_per_stream == 1
    lone = result.layouts[2]
    assert lone.inferences_per_s == pytest.approx(lone.batches_per_s)  # one request per lone batch
    assert result.batch_latency_ms > 0 and result.lone_batch_latency_ms > 0 and result.worker_lone_batch_latency_ms > 0
    # About 100 calls a layout (three readings each in 0.3 s), shared by its streams.
    assert all(90 <= layout.batches <= 110 for layout in result.layouts[:2])
    assert all(45 <= layout.batches <= 55 for layout in result.layouts[2:])  # the lone requests' half
    # CPU per inference is the process's CPU time over the layout (10 ms here) per inference, not threads / rate.
    assert result.cpu_ms_per_inference == pytest.approx(10 / (best.batches * 2))


def test_batches_are_padded_to_the_smallest_bucket_like_the_handler(model_dir):
    models, info, _ = ceiling.load_models(model_dir)
    full, lone = ceiling.build_batches(model_dir, info, sorted(models), PAIRS)
    assert all(batch[0].shape[0] == 2 for batch in full + lone)  # batch_size, lone ones padded up
    assert {batch[0].shape[1] for batch in lone} == {8, 16}  # short pairs go to the short graph


def test_one_worker_of_two_threads_is_compared_with_two_single_thread_streams_too(model_dir, clock):
    result = ceiling.measure_here(model_dir, PAIRS, workers=1, threads_per_worker=2, seconds=0.2)
    names = [layout.name for layout in result.layouts]
    assert names == ["all threads", "one stream per thread", "lone request, all threads"]
    assert result.layouts[1].streams == 2 and result.layouts[1].threads_per_stream == 1
    assert result.worker_lone_batch_latency_ms == result.lone_batch_latency_ms


def test_measure_hands_its_child_the_request_and_reads_the_ceiling_back(model_dir, clock, monkeypatch):
    """measure's side of the child (tasks/common/child.py): the module, the request, one core's environment; the
    child's side is _measure_request, run here."""
    asked = []

    def run_here(module, request, error, log=None, env=None, timeout=None, known=(), refused=None):
        asked.append((module, request, env, error, known, refused))
        return ceiling._measure_request(request)

    monkeypatch.setattr(child, "run", run_here)
    result = ceiling.measure(model_dir, PAIRS, workers=2, threads_per_worker=1, seconds=0.3, windows=3)
    ((module, request, env, error, known, refused),) = asked
    assert module == "tasks.measure.ceiling" and error is ceiling.CeilingError
    assert known == (ceiling.CeilingUnavailable,) and refused is ceiling.CeilingUnavailable
    assert (request["workers"], request["threads_per_worker"], request["seconds"], request["windows"]) == (2, 1, 0.3, 3)
    assert [tuple(pair) for pair in request["pairs"]] == PAIRS and request["model_dir"] == str(model_dir)
    assert env["NEURON_RT_NUM_CORES"] == "1"  # a child loads on one core, the runtime's pick
    assert isinstance(result, ceiling.Ceiling) and result.windows == 3 and result.threads == 2


def test_a_graph_that_does_not_load_fails_the_ceiling_with_its_message(model_dir, tmp_path, clock):
    """In the child, such an error reaches the caller as a CeilingError with this message (test_child.py)."""
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model_8.pt").write_text("not a graph")
    with pytest.raises(RuntimeError, match="model_8.pt|PytorchStreamReader|zip"):
        ceiling.measure_here(broken, PAIRS, workers=1, threads_per_worker=1, seconds=0.1)


def test_each_throughput_layout_is_the_median_of_its_windows_taken_in_turn_with_their_cv(model_dir, clock):
    result = ceiling.measure_here(model_dir, PAIRS, workers=2, threads_per_worker=1, seconds=0.3, windows=3)
    assert result.windows == 3
    for layout in result.layouts[:2]:
        assert len(layout.window_inferences_per_s) == 3
        assert layout.inferences_per_s == pytest.approx(float(np.median(layout.window_inferences_per_s)))
        rates = np.array(layout.window_inferences_per_s)
        assert layout.cv == pytest.approx(rates.std() / rates.mean())
    best = next(layout for layout in result.layouts if layout.name == result.best_layout)
    assert result.cv == best.cv


def test_windows_are_interleaved_so_a_slow_stretch_of_the_host_falls_on_every_layout(monkeypatch):
    order = []

    def timed(models, device, batches, name, streams, threads, seconds, requests_per_batch=None):
        order.append(name)
        return ceiling.Layout(
            name=name,
            streams=streams,
            threads_per_stream=threads,
            batches_per_s=10.0,
            inferences_per_s=20.0 * len(order),
            batch_latency_ms_p50=50.0,
            batch_latency_ms_mean=50.0,
            batches=10,
            seconds=seconds,
        )

    monkeypatch.setattr(ceiling, "time_layout", timed)
    layouts = ceiling.throughput_layouts(None, None, [], workers=2, threads_per_worker=1, seconds=3.0, windows=3)
    assert order == ["all threads", "as served"] * 4  # a first round, not counted, then three
    assert [layout.window_inferences_per_s for layout in layouts] == [[60.0, 100.0, 140.0], [80.0, 120.0, 160.0]]
    assert [layout.inferences_per_s for layout in layouts] == [100.0, 120.0]  # the median window
