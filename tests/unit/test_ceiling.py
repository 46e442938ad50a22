"""The in-process ceiling on a tiny traced stand-in: batches built as the handler builds them."""

import numpy as np
import pytest
import torch

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.measure import ceiling

PAIRS = [("A cat sat on the mat.", "A cat was sitting on the mat."),
         ("The committee reviewed the long proposal in great detail and asked for revisions.", "Rain."),
         ("How old are you?", "What is your age?")] * 4


class Tiny(torch.nn.Module):
    def forward(self, ids_0, mask_0, ids_1, mask_1):
        score = (ids_0 * mask_0).float().mean(1) - (ids_1 * mask_1).float().mean(1)
        return torch.stack([-score, score], dim=-1)


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    files = {}
    for length in (8, 16):
        example = (torch.ones(2, length, dtype=torch.long),) * 4
        files[length] = f"model_{length}.pt"
        torch.jit.save(torch.jit.trace(Tiny(), example), str(tmp_path / files[length]))
    tokenizer.save_pretrained(str(tmp_path))
    ModelInfo(kind="bi-encoder", backend="cpu", batch_size=2, max_length=16, buckets=[8, 16], model_files=files,
              class_names=list(CLASS_NAMES), source="test", parity_max_abs_diff=0.0).write(tmp_path)
    return tmp_path


def test_ceiling_times_the_buckets_the_pairs_need_in_each_layout(model_dir):
    before = torch.get_num_threads()
    result = ceiling.measure(model_dir, PAIRS, workers=2, threads_per_worker=1, seconds=0.3)
    assert torch.get_num_threads() == before  # the flow process's threads are given back
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
    # CPU per inference is measured (the child's CPU time), so the cores it implies never exceed the threads used
    cores_used = result.cpu_ms_per_inference * result.inferences_per_s / 1000
    assert 0 < cores_used <= result.threads + 0.25


def test_batches_are_padded_to_the_smallest_bucket_like_the_handler(model_dir):
    models, info, _ = ceiling.load_models(model_dir)
    full, lone = ceiling.build_batches(model_dir, info, sorted(models), PAIRS)
    assert all(batch[0].shape[0] == 2 for batch in full + lone)  # batch_size, lone ones padded up
    assert {batch[0].shape[1] for batch in lone} == {8, 16}  # short pairs go to the short graph


def test_one_worker_of_two_threads_is_compared_with_two_single_thread_streams_too(model_dir):
    result = ceiling.measure(model_dir, PAIRS, workers=1, threads_per_worker=2, seconds=0.2)
    names = [layout.name for layout in result.layouts]
    assert names == ["all threads", "one stream per thread", "lone request, all threads"]
    assert result.layouts[1].streams == 2 and result.layouts[1].threads_per_stream == 1
    assert result.worker_lone_batch_latency_ms == result.lone_batch_latency_ms


def test_a_failure_in_the_ceilings_child_process_reaches_the_caller_with_its_message(model_dir):
    (model_dir / "model_8.pt").write_text("not a graph")
    with pytest.raises(ceiling.CeilingError, match="model_8.pt|PytorchStreamReader|zip"):
        ceiling.measure(model_dir, PAIRS, workers=1, threads_per_worker=1, seconds=0.1)


def test_each_throughput_layout_is_the_median_of_its_windows_taken_in_turn_with_their_cv(model_dir):
    result = ceiling.measure(model_dir, PAIRS, workers=2, threads_per_worker=1, seconds=0.3, windows=3)
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
        return ceiling.Layout(name=name, streams=streams, threads_per_stream=threads, batches_per_s=10.0,
                              inferences_per_s=20.0 * len(order), batch_latency_ms_p50=50.0,
                              batch_latency_ms_mean=50.0, batches=10, seconds=seconds)

    monkeypatch.setattr(ceiling, "time_layout", timed)
    layouts = ceiling.throughput_layouts(None, None, [], workers=2, threads_per_worker=1, seconds=3.0, windows=3)
    assert order == ["all threads", "as served"] * 3
    assert [layout.window_inferences_per_s for layout in layouts] == [[20.0, 60.0, 100.0], [40.0, 80.0, 120.0]]
    assert [layout.inferences_per_s for layout in layouts] == [60.0, 80.0]  # the median window
