"""The compile cache: a second trace with the same inputs reuses the first one's graphs; anything that
shapes the graph makes a new entry; a damaged entry is found and rebuilt; clear empties it."""

import json

import pytest

from serving.contract import ModelInfo
from tasks.common.config import CACHE_ENV, RunConfig
from tasks.prepare import cache
from tasks.prepare import trace as trace_module
from tools import cache as cache_tool


@pytest.fixture
def compiles(monkeypatch):
    """trace's child process, replaced by one that writes a small fake graph and counts the builds."""
    calls = []

    def fake_compile(request, log):
        calls.append(request)
        out = trace_module.Path(request["out_dir"])
        (out / f"model_{request['max_length']}.pt").write_bytes(b"graph" * 1000)
        (out / "vocab.txt").write_text("[PAD]\n")
        info = ModelInfo(
            kind="bi-encoder",
            backend=request["backend"],
            batch_size=request["batch_size"],
            max_length=request["max_length"],
            buckets=request["buckets"],
            model_files={request["max_length"]: f"model_{request['max_length']}.pt"},
            tokenizer_files=["vocab.txt"],
            class_names=["not paraphrase", "paraphrase"],
            threshold=0.5,
            source="embedded",
            compiler_args=[],
            parity_max_abs_diff=0.0,
            versions={},
        )
        info.write(out)
        return info

    monkeypatch.setattr(trace_module, "_compile", fake_compile)
    return calls


def traced(tmp_path, run, cache_dir, batch_size=6, backend="cpu", **model):
    config = RunConfig.model_validate(
        {
            "model": model,
            "serving": {"batch_size": batch_size, "max_length": 128, "length_buckets": None},
            "build": {"cache_dir": str(cache_dir)} if cache_dir else {"compile_cache": False},
        }
    )
    return trace_module.trace(config, backend, tmp_path / run / "model")


def test_second_trace_with_the_same_inputs_is_a_hit_and_skips_compiling(tmp_path, compiles):
    first = traced(tmp_path, "night1", tmp_path / "cache")
    second = traced(tmp_path, "night2", tmp_path / "cache")
    assert first.cache["cache"] == "miss" and second.cache["cache"] == "hit"
    assert len(compiles) == 1
    assert second.cache["seconds_saved"] >= 0
    assert (second.model_dir / "model_128.pt").read_bytes() == (first.model_dir / "model_128.pt").read_bytes()
    assert second.info == first.info


@pytest.mark.parametrize("change", [{"batch_size": 4}, {"threshold": 0.7}, {"kind": "sequence-classification"}])
def test_anything_that_shapes_the_graph_is_a_miss(tmp_path, compiles, change):
    batch = change.pop("batch_size", 6)
    traced(tmp_path, "night1", tmp_path / "cache")
    again = traced(tmp_path, "night2", tmp_path / "cache", batch_size=batch, **change)
    assert again.cache["cache"] == "miss" and len(compiles) == 2


def test_other_package_versions_are_a_miss(tmp_path, compiles, monkeypatch):
    traced(tmp_path, "night1", tmp_path / "cache")
    monkeypatch.setattr(cache, "package_versions", lambda *names: {name: "9.9" for name in names})
    assert traced(tmp_path, "night2", tmp_path / "cache").cache["cache"] == "miss"


def test_on_neuron_another_islpy_beside_the_same_compiler_is_a_miss(tmp_path, compiles, monkeypatch):
    """islpy 2026.2 under neuronx-cc 2.27 breaks its compiles (NCC_ISMP902): a graph built with one islpy is not
    the graph another would build, though neuronx-cc's own version is the same."""
    installed = {"neuronx-cc": "2.27.5334.0", "torch-neuronx": "2.9.0.2.15.32035", "islpy": "2026.1"}
    monkeypatch.setattr(cache, "package_versions", lambda *names: {name: installed.get(name, "1.0") for name in names})
    assert traced(tmp_path, "night1", tmp_path / "cache", backend="neuron").cache["cache"] == "miss"
    assert traced(tmp_path, "night2", tmp_path / "cache", backend="neuron").cache["cache"] == "hit"
    installed["islpy"] = "2026.2.2"
    night3 = traced(tmp_path, "night3", tmp_path / "cache", backend="neuron")
    assert night3.cache["cache"] == "miss" and len(compiles) == 2
    parts = json.loads((tmp_path / "cache" / night3.cache["key"] / "manifest.json").read_text())["parts"]
    assert parts["compiler_dependencies"]["islpy"] == "2026.2.2"


@pytest.mark.parametrize("damage", ["truncate a graph", "remove the manifest", "half-written"])
def test_a_damaged_entry_is_detected_and_rebuilt(tmp_path, compiles, damage):
    first = traced(tmp_path, "night1", tmp_path / "cache")
    entry = tmp_path / "cache" / first.cache["key"]
    if damage == "truncate a graph":
        (entry / "model_128.pt").write_bytes(b"gra")
    elif damage == "remove the manifest":
        (entry / cache.MANIFEST).unlink()
    else:
        (entry / cache.MANIFEST).write_text('{"files": {"model_128.pt"')
    again = traced(tmp_path, "night2", tmp_path / "cache")
    assert again.cache["cache"] == "miss" and "corrupt" in again.cache["reason"]
    assert len(compiles) == 2
    assert traced(tmp_path, "night3", tmp_path / "cache").cache["cache"] == "hit"


def test_no_cache_dir_always_traces(tmp_path, compiles):
    traced(tmp_path, "night1", None)
    assert traced(tmp_path, "night2", None).cache == {"cache": "off"} and len(compiles) == 2


def test_clear_command_empties_the_cache(tmp_path, compiles, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    traced(tmp_path, "night1", tmp_path / "cache")
    cache_tool.main(["list"])
    assert "built in" in capsys.readouterr().out
    assert cache_tool.main(["clear"]) == 0
    assert "1 entries deleted" in capsys.readouterr().out
    assert traced(tmp_path, "night2", tmp_path / "cache").cache["cache"] == "miss"


def test_the_manifest_records_what_the_key_was_made_of(tmp_path, compiles):
    first = traced(tmp_path, "night1", tmp_path / "cache")
    manifest = json.loads((tmp_path / "cache" / first.cache["key"] / cache.MANIFEST).read_text())
    assert manifest["parts"]["batch_size"] == 6 and "torch" in manifest["parts"]["versions"]
