"""Bring your own: what a brought .mar or graph turns into before anything is served, and what is refused."""

import zipfile

import pytest

from serving.contract import ModelInfo
from tasks.common.config import ConfigError, load_config
from tasks.prepare.bring import BringError, from_mar
from tasks.verify.checks import CheckResult, not_applicable


def _mar(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_a_foreign_mar_is_copied_into_the_run_store_named_by_its_manifest_with_the_tutorial_labels(tmp_path):
    mar = _mar(
        tmp_path / "x.mar",
        {"MAR-INF/MANIFEST.json": '{"model": {"modelName": "bert-tutorial"}}', "handler.py": "", "model.pt": ""},
    )
    brought = from_mar(mar, tmp_path / "store", 6, 128, "cpu")
    assert brought.model_name == "bert-tutorial" and brought.mar_file == tmp_path / "store" / "bert-tutorial.mar"
    assert brought.mar_file.read_bytes() == mar.read_bytes()
    assert brought.info.handler == "foreign"
    assert (brought.info.batch_size, brought.info.max_length) == (6, 128)
    assert brought.info.class_names == ["not paraphrase", "paraphrase"]


def test_a_mar_of_ours_keeps_its_own_model_info(tmp_path):
    info = ModelInfo(
        kind="bi-encoder",
        backend="cpu",
        batch_size=4,
        max_length=64,
        buckets=[64],
        model_files={64: "model_64.pt"},
        class_names=["no", "yes"],
        source="embedded",
        parity_max_abs_diff=1e-6,
    )
    mar = _mar(
        tmp_path / "ours.mar",
        {"MAR-INF/MANIFEST.json": '{"model": {"modelName": "bert"}}', "model_info.json": info.model_dump_json()},
    )
    brought = from_mar(mar, tmp_path / "store", 6, 128, "cpu")
    assert brought.info == info and brought.info.handler == "ours"


def test_a_file_that_is_not_an_archive_is_refused_with_a_fix(tmp_path):
    (tmp_path / "bad.mar").write_text("not a zip")
    with pytest.raises(BringError, match="not a readable model archive") as caught:
        from_mar(tmp_path / "bad.mar", tmp_path / "store", 6, 128, "cpu")
    assert caught.value.fix


def test_traced_and_mar_together_or_a_missing_file_are_refused_before_anything_starts(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"")
    (tmp_path / "a.mar").write_bytes(b"")
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, {"model.traced": str(tmp_path / "a.pt"), "model.mar": str(tmp_path / "a.mar")})
    with pytest.raises(ConfigError, match="model.mar"):
        load_config(None, {"model.mar": str(tmp_path / "missing.mar")})


def test_a_check_that_does_not_apply_says_so_and_why():
    result = not_applicable("parity with in-process model", "the handler sends no probability")
    assert isinstance(result, CheckResult) and result.passed
    assert result.detail == "not applicable: the handler sends no probability"
    assert result.metrics == {"applicable": False}
