import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serving.contract import CLASS_NAMES, ModelInfo
from tasks.prepare.archive import archive
from tasks.prepare.trace import TracedModel


def _info(**shape) -> ModelInfo:
    return ModelInfo(
        kind="bi-encoder",
        backend="cpu",
        buckets=[shape["max_length"]],
        model_files={},
        class_names=list(CLASS_NAMES),
        source="test",
        parity_max_abs_diff=0.0,
        **shape,
    )


def test_the_registered_name_follows_the_tutorial_pattern():
    assert _info(max_length=128, batch_size=6).model_name == "bert-max_length128-batch_size6"


def test_each_traced_shape_gets_its_own_name():
    names = {
        _info(max_length=128, batch_size=6).model_name,
        _info(max_length=64, batch_size=6).model_name,
        _info(max_length=128, batch_size=8).model_name,
    }
    assert len(names) == 3


def _traced(tmp_path: Path) -> TracedModel:
    """A model directory with the files archive packs (their bytes do not matter to the archiver)."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    info = _info(max_length=32, batch_size=2).model_copy(
        update={"model_files": {32: "model_32.pt"}, "tokenizer_files": ["vocab.txt"]}
    )
    info.write(model_dir)
    (model_dir / "model_32.pt").write_bytes(os.urandom(2_000_000))
    (model_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return TracedModel(model_dir=model_dir, info=info)


def _whole(mar: Path, traced: TracedModel) -> bool:
    with zipfile.ZipFile(mar) as packed:
        files = {p.name for p in traced.info.files(traced.model_dir)}
        return packed.testzip() is None and files <= set(packed.namelist())


def test_archiving_leaves_what_another_run_gathers_in_the_temporary_directory_alone(tmp_path, monkeypatch):
    """torch-model-archiver gathers a model's files in $TMPDIR/<model name> and deletes what is there first;
    another run archiving the same model on this host had its files there."""
    traced = _traced(tmp_path)
    shared = tmp_path / "tmp"
    others = shared / traced.info.model_name
    others.mkdir(parents=True)
    (others / "model_32.pt").write_bytes(b"another run's graph, being packed")
    monkeypatch.setenv("TMPDIR", str(shared))

    mar = archive(traced, tmp_path / "model_store")

    assert (others / "model_32.pt").read_bytes() == b"another run's graph, being packed"
    assert _whole(mar.mar_file, traced)


def test_two_runs_archiving_the_same_model_at_once_both_get_a_whole_mar(tmp_path):
    """A night and a smoke check on two workers of one host archive the same model at the same time."""
    traced = _traced(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        mars = list(pool.map(lambda i: archive(traced, tmp_path / f"model_store{i}"), range(4)))
    assert all(_whole(mar.mar_file, traced) for mar in mars)


def test_an_archive_narrowed_to_max_length_packs_only_that_graph(tmp_path):
    """compare-buckets' single-bucket registration loads the max_length graph only: the other buckets' graphs in
    its .mar were ~270 MB of copies no worker loaded, beside the same graphs in the bucketed .mar and model/."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    graphs = {16: "model_16.pt", 32: "model_32.pt"}
    info = _info(max_length=32, batch_size=2).model_copy(
        update={"buckets": [16, 32], "model_files": graphs, "tokenizer_files": ["vocab.txt"]}
    )
    info.write(model_dir)
    for name in graphs.values():
        (model_dir / name).write_bytes(os.urandom(500_000))
    (model_dir / "vocab.txt").write_text("[PAD]\n")
    traced = TracedModel(model_dir=model_dir, info=info)
    single = archive(traced, tmp_path / "model_store", name="single", length_buckets=[32])
    bucketed = archive(traced, tmp_path / "model_store")
    with zipfile.ZipFile(single.mar_file) as packed:
        names = {Path(name).name for name in packed.namelist()}
    assert "model_32.pt" in names and "model_16.pt" not in names and "model_info.json" in names
    assert _whole(bucketed.mar_file, traced)
