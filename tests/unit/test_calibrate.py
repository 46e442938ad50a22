import numpy as np
import pytest

from tasks.common.config import REPO_ROOT
from tasks.verify.accuracy import read_mrpc
from tools.calibrate import best_threshold

DEV = REPO_ROOT.parent / "shared/data/msr_paraphrase_dev.tsv"


@pytest.mark.skipif(not DEV.is_file(), reason=f"{DEV} not present")
def test_read_mrpc_dev_split():
    pairs, labels = read_mrpc(DEV)
    rows = len(DEV.read_text(encoding="utf-8").splitlines()) - 1
    assert len(pairs) == rows == 400
    assert len(labels) == len(pairs)
    assert set(np.unique(labels)) == {0, 1}
    assert all(isinstance(a, str) and a.strip() and isinstance(b, str) and b.strip() for a, b in pairs)


def test_read_mrpc_keeps_quotes_and_columns(tmp_path):
    path = tmp_path / "mini.tsv"
    path.write_text(
        'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\t"Quoted" start\tplain\n0\t3\t4\tan "inner\tother side\n',
        encoding="utf-8",
    )
    pairs, labels = read_mrpc(path)
    assert pairs == [('"Quoted" start', "plain"), ('an "inner', "other side")]
    assert labels.tolist() == [1, 0]


@pytest.mark.parametrize("text", ["a,b,c\n1,2,3\n", "label\tx\ty\tz\tw\n1\ta\tb\tc\td\n", "Quality\tonly\n1\tx\n"])
def test_read_mrpc_refuses_other_files(tmp_path, text):
    path = tmp_path / "other.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match="not MRPC"):
        read_mrpc(path)


def test_best_threshold_separates_separable_data():
    rng = np.random.default_rng(0)
    negatives = rng.uniform(0.0, 0.4, 50)
    positives = rng.uniform(0.6, 1.0, 50)
    similarity = np.concatenate([negatives, positives])
    labels = np.concatenate([np.zeros(50, int), np.ones(50, int)])
    order = rng.permutation(100)
    threshold, accuracy = best_threshold(similarity[order], labels[order])
    assert accuracy == 1.0
    assert negatives.max() < threshold <= positives.min()


def test_best_threshold_on_overlapping_data():
    threshold, accuracy = best_threshold(np.array([0.1, 0.6, 0.4, 0.9]), np.array([0, 0, 1, 1]))
    assert accuracy == pytest.approx(0.75)
    assert ((np.array([0.1, 0.6, 0.4, 0.9]) >= threshold) == np.array([0, 0, 1, 1])).mean() == accuracy


def test_without_the_msr_paraphrase_files_each_reader_says_what_it_cannot_measure_and_how_to_get_them(
    tmp_path, monkeypatch, capsys
):
    """No traceback: the tools name the missing file, what cannot be measured, and the command that builds it; the
    benchmark says what its fallback pool cannot measure; a config naming a missing split says how to get it."""
    from tasks.common import config as config_module
    from tasks.common.config import ConfigError, load_config
    from tasks.verify import pairs
    from tools import bf16_tolerance, calibrate

    gone = tmp_path / "data" / "msr_paraphrase_train.tsv"
    rebuild = f".venv/bin/python -m tools.mrpc_data --out {gone.parent}"
    assert calibrate.main([str(gone)]) == 2
    said = capsys.readouterr().err
    assert f"{gone} does not exist: without it a threshold" in said and rebuild in said
    monkeypatch.setattr(bf16_tolerance, "TRAIN", gone)
    assert bf16_tolerance.main([]) == 2
    said = capsys.readouterr().err
    assert "the BF16 drift the parity tolerance is derived from cannot be measured" in said and rebuild in said

    monkeypatch.setattr(pairs, "MRPC_DEV_FILE", tmp_path / "data" / "msr_paraphrase_dev.tsv")
    warning = pairs.missing_dev_split()
    assert warning is not None and "golden pairs" in warning and "do not compare" in warning and rebuild in warning
    monkeypatch.setattr(pairs, "MRPC_DEV_FILE", config_module.GOLDEN_PAIRS_FILE)  # any file that exists
    assert pairs.missing_dev_split() is None

    with pytest.raises(ConfigError) as refused:
        load_config(None, {"checks.accuracy_file": str(gone.with_name("msr_paraphrase_dev.tsv"))})
    assert "does not exist" in str(refused.value) and "tools.mrpc_data" in str(refused.value)


def test_token_lengths_counts_what_the_handler_pads_to_and_which_bucket_a_batch_runs_at(tmp_path, capsys):
    """The figures behind the default length buckets (docs/benchmark.md): a batch runs at the bucket holding its
    longest sentence, special tokens included."""
    from tools import token_lengths

    short, long = "A cat sat.", " ".join(["word"] * 45)  # 5 and 47 tokens with [CLS] and [SEP]
    rows = [f"1\t{i}\t{i + 100}\t{short}\t{short}" for i in range(6)] + [f"0\t7\t8\t{long}\t{short}"]
    data = tmp_path / "train.tsv"
    data.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n")
    assert token_lengths.main([str(data), "--batch-size", "7", "--batches", "3"]) == 0
    out = capsys.readouterr().out
    assert "longest sentence of a batch of 7 (3 random batches, seed 0): p50 47, p99 47" in out
    assert "40: 0.0%, 56: 100.0%" in out  # every batch holds the long pair: all at 56
    assert token_lengths.main([str(tmp_path / "msr_paraphrase_train.tsv")]) == 2
    assert "tools.mrpc_data --out" in capsys.readouterr().err
