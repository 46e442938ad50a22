"""kind: auto, from what the checkpoint is -- through the config a user gives, as the trace stage loads it."""

import pytest

from tasks.common.config import load_config
from tasks.prepare.trace import TraceError, load_checkpoint
from tests.checkpoints import tiny


def test_a_sequence_classification_checkpoint_given_alone_is_served_as_that_classifier(tmp_path):
    checkpoint = tiny(tmp_path / "mrpc", labels={0: "different", 1: "equivalent"})
    model = load_config(None, {"model.source": str(checkpoint)}).model  # --model DIR, nothing else
    wrapped, _, kind = load_checkpoint(model)
    assert kind == "sequence-classification" and type(wrapped).__name__ == "PairClassifier"
    assert wrapped.class_names == ["different", "equivalent"]  # the checkpoint's own labels


def test_the_embedded_model_is_a_bi_encoder_by_what_it_is_at_its_calibrated_threshold():
    model = load_config().model
    assert model.kind == "auto"  # no key pins it
    wrapped, _, kind = load_checkpoint(model)
    assert kind == "bi-encoder" and float(wrapped.threshold) == pytest.approx(0.6821)


def test_a_bi_encoder_of_your_own_is_not_given_a_guessed_threshold(tmp_path):
    model = load_config(None, {"model.source": str(tiny(tmp_path / "encoder", head=False))}).model
    with pytest.raises(TraceError, match="model.threshold is not set") as caught:
        load_checkpoint(model)
    assert "python -m tools.calibrate --model" in caught.value.fix
    calibrated = model.model_copy(update={"threshold": 0.8})
    assert float(load_checkpoint(calibrated)[0].threshold) == pytest.approx(0.8)


def test_a_classification_head_of_other_than_two_labels_is_refused_not_served_as_a_bi_encoder(tmp_path):
    checkpoint = tiny(tmp_path / "nli", labels={0: "entailment", 1: "neutral", 2: "contradiction"})
    with pytest.raises(TraceError, match="3 labels; a paraphrase model needs 2"):
        load_checkpoint(load_config(None, {"model.source": str(checkpoint)}).model)
