"""The verdicts of the checks, on answers made up to be right or wrong (no server needed)."""

import math

import numpy as np
import pytest

from tasks.common.config import REPO_ROOT
from tasks.verify.accuracy import read_mrpc, read_mrpc_lenient, scores
from tasks.verify.checks import Prediction, _verdict, load_golden, parity


def _prediction(answer="paraphrase", expected="paraphrase", status=200, probability=0.9):
    return Prediction(
        seq_0="a",
        seq_1="b",
        expected=expected,
        answer=answer,
        status_code=status,
        latency_ms=1.0,
        probability=probability,
    )


class FakeReference:
    def __init__(self, answers):
        self.answers = answers

    def predict(self, pairs):
        return self.answers[: len(pairs)]


def test_a_wrong_label_or_an_http_error_fails_the_verdict_and_is_named():
    result = _verdict("golden pairs", [_prediction(), _prediction(answer="not paraphrase"), _prediction(status=503)])
    assert not result.passed
    assert result.detail.startswith("1/3 labels right")
    assert "expected 'paraphrase', got 'not paraphrase'" in result.detail and "HTTP 503" in result.detail


def test_parity_passes_within_tolerance_and_fails_beyond_it_or_on_a_label():
    served = [_prediction(probability=0.9), _prediction(answer="not paraphrase", probability=0.2)]
    close = FakeReference([("paraphrase", 0.9000004), ("not paraphrase", 0.2)])
    assert parity(served, close, 1e-3).passed
    drifted = FakeReference([("paraphrase", 0.95), ("not paraphrase", 0.2)])
    assert not parity(served, drifted, 1e-3).passed
    relabelled = FakeReference([("paraphrase", 0.9), ("paraphrase", 0.2)])
    result = parity(served, relabelled, 1e-3)
    assert not result.passed and result.metrics["label_mismatches"] == 1


def test_parity_fails_on_a_missing_or_nan_score():
    result = parity([_prediction(probability=math.nan)], FakeReference([("paraphrase", 0.9)]), 1e-3)
    assert not result.passed and math.isinf(result.metrics["max_abs_diff"])


def test_scores_give_accuracy_f1_and_the_confusion_matrix():
    truth = np.array([1, 1, 1, 0, 0])
    predicted = np.array([1, 1, 0, 1, 0])
    got = scores(truth, predicted)
    assert got["accuracy"] == pytest.approx(0.6)
    assert got["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert got["confusion"] == [[1, 1], [1, 2]]


def test_the_golden_file_loads_and_a_bad_entry_is_refused(tmp_path):
    golden = load_golden(REPO_ROOT / "configs" / "golden_pairs.yaml")
    assert len(golden) >= 10 and {label for _, _, label in golden} == {"paraphrase", "not paraphrase"}
    bad = tmp_path / "golden.yaml"
    bad.write_text('- {label: same, seq_0: "a", seq_1: "b"}\n')
    with pytest.raises(ValueError, match="entry 1"):
        load_golden(bad)


def test_an_mrpc_file_with_a_bad_row_is_refused_with_its_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\ta\tb\nyes\t1\t2\ta\tb\n")
    with pytest.raises(ValueError, match="line 3"):
        read_mrpc(path)


def test_the_training_split_has_one_broken_line_which_is_skipped_and_reported():
    train = REPO_ROOT.parent / "shared" / "data" / "msr_paraphrase_train.tsv"
    if not train.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    with pytest.raises(ValueError, match="line 2124"):
        read_mrpc(train)
    pairs, labels, skipped = read_mrpc_lenient(train)
    assert skipped == [2124] and len(pairs) == len(labels) == 3674


def test_a_server_that_answers_without_the_token_fails_the_token_check_and_with_auth_off_it_is_not_held_to_it():
    """The check holds each engine to its own refusal; a server that answers a request without the token -- an
    engine whose replicas forgot to check it -- fails it, naming what it answered."""
    from types import SimpleNamespace

    from tasks.measure.trivial_endpoint import TrivialEndpoint  # answers 200 to anything
    from tasks.serve.clients import Inference
    from tasks.verify.checks import token_refused

    with TrivialEndpoint() as endpoint:
        served = SimpleNamespace(
            inference_url=endpoint.url.removesuffix("/predictions/trivial"), inference_headers=dict
        )
        inference = Inference(served, "trivial", ["not paraphrase", "paraphrase"])
        try:
            open_door = token_refused(inference, 401)
            off = token_refused(inference, None)
        finally:
            inference.close()
    assert not open_door.passed and open_door.detail.startswith("no token: HTTP 200; a wrong token: HTTP 200")
    assert off.passed and off.detail.startswith("not applicable: token authorization is off")
