"""ParaphraseHandler as TorchServe drives it: BaseHandler.handle() -> preprocess -> inference ->
postprocess, with a fake context standing in for TorchServe's."""

import json

import pytest
import torch

import serving.handler
from serving.contract import BACKEND_ENV, THREADS_ENV, ModelInfo
from serving.handler import ParaphraseHandler
from serving.model import parse_request

LONG = " ".join(["paraphrase"] * 60)


# --- parse_request -------------------------------------------------------------------------


def test_form_fields_as_bytearray():
    request = {"seq_0": bytearray("Zürich is big".encode()), "seq_1": bytearray(b"It is large")}
    assert parse_request(request) == ("Zürich is big", "It is large")


def test_json_body_already_decoded():
    assert parse_request({"body": {"seq_0": "a b", "seq_1": "c d"}}) == ("a b", "c d")


@pytest.mark.parametrize("wrap", [bytes, bytearray])
def test_json_body_as_bytes(wrap):
    body = wrap(json.dumps({"seq_0": "first", "seq_1": "second"}).encode())
    assert parse_request({"body": body}) == ("first", "second")


def test_missing_seq_1_is_refused():
    with pytest.raises(ValueError, match="seq_1"):
        parse_request({"seq_0": bytearray(b"only one")})


def test_request_without_fields_or_body_names_seq_0():
    with pytest.raises(ValueError, match="missing field seq_0"):
        parse_request({"data": b"x"})


@pytest.mark.parametrize("text", [b"", b"   \n\t", "", "  "])
def test_empty_text_is_refused(text):
    with pytest.raises(ValueError, match="seq_1 is empty"):
        parse_request({"seq_0": b"fine", "seq_1": text})


def test_non_utf8_bytes_are_refused():
    with pytest.raises(ValueError, match="seq_0 is not valid UTF-8"):
        parse_request({"seq_0": bytearray(b"\xff\xfe"), "seq_1": b"ok"})


def test_wrong_json_type_is_refused():
    with pytest.raises(ValueError, match="seq_0 must be a string"):
        parse_request({"body": json.dumps({"seq_0": 5, "seq_1": "x"}).encode()})


def test_json_list_body_is_refused():
    with pytest.raises(ValueError, match="object"):
        parse_request({"body": json.dumps(["a", "b"]).encode()})


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe"])
def test_invalid_json_bytes_are_refused(body):
    with pytest.raises(ValueError, match="not JSON"):
        parse_request({"body": body})


# --- ParaphraseHandler, driven through BaseHandler.handle ---------------------------------------


class FakeMetrics:
    def __init__(self):
        self.times = []

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None, metric_type=None):
        self.times.append((name, value, unit))


class FakeContext:
    """What the handler uses of TorchServe's Context, recording what it is told."""

    def __init__(self, model_yaml_config=None, model_dir=None):
        self.statuses = {}
        self.headers = {}
        self.metrics = FakeMetrics()
        # What archive writes into every .mar's model-config.yaml: TorchServe's @timed profiling on.
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {"handler": {"profile": True}}
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}

    def get_request_header(self, idx, key):
        return None

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value


class StandInBiEncoder:
    """Scores a pair as a paraphrase exactly when both sentences tokenize the same."""

    def __init__(self):
        self.calls = []

    def __call__(self, ids_0, mask_0, ids_1, mask_1):
        self.calls.append([tuple(t.shape) for t in (ids_0, mask_0, ids_1, mask_1)])
        same = (ids_0 == ids_1).all(dim=1)
        margin = torch.where(same, torch.tensor(2.0), torch.tensor(-2.0))
        return torch.stack([-margin, margin], dim=-1)


class StandInPairClassifier:
    def __init__(self):
        self.calls = []

    def __call__(self, input_ids, attention_mask, token_type_ids):
        self.calls.append([tuple(t.shape) for t in (input_ids, attention_mask, token_type_ids)])
        # Row i: paraphrase when the pair is longer than 8 tokens (a fixed, checkable rule).
        long = attention_mask.sum(dim=1) > 8
        margin = torch.where(long, torch.tensor(3.0), torch.tensor(-3.0))
        return torch.stack([-margin, margin], dim=-1)


def model_info(
    kind="bi-encoder", batch_size=4, max_length=16, buckets=None, class_names=("not paraphrase", "paraphrase")
) -> ModelInfo:
    buckets = buckets or [max_length]
    return ModelInfo(
        kind=kind,
        backend="cpu",
        batch_size=batch_size,
        max_length=max_length,
        buckets=buckets,
        model_files={b: f"model_{b}.pt" for b in buckets},
        class_names=list(class_names),
        source="stand-in",
        parity_max_abs_diff=0.0,
    )


def make_handler(
    tokenizer,
    model,
    kind="bi-encoder",
    batch_size=4,
    max_length=16,
    models=None,
    class_names=("not paraphrase", "paraphrase"),
):
    """A handler as initialize leaves it, with stand-in graphs instead of traced ones."""
    models = models or {max_length: model}
    handler = ParaphraseHandler()
    handler.info = model_info(kind, batch_size, max_length, sorted(models), class_names)
    handler.class_names = handler.info.class_names
    handler.models = models
    handler.buckets = sorted(models)
    handler.device = torch.device("cpu")
    handler.tokenizer = tokenizer
    handler.initialized = True
    return handler


SAME = {"seq_0": bytearray(b"The sky is blue"), "seq_1": bytearray(b"The sky is blue")}
DIFFERENT = {"seq_0": bytearray(b"The sky is blue"), "seq_1": bytearray(b"Apples are bad for you")}
MALFORMED = {"seq_0": bytearray(b"no partner")}


@pytest.mark.parametrize(
    "first, last, first_label, last_label",
    [
        (SAME, DIFFERENT, "paraphrase", "not paraphrase"),
        (DIFFERENT, SAME, "not paraphrase", "paraphrase"),
    ],
)
def test_bad_request_gets_its_own_400_and_others_are_answered(tokenizer, first, last, first_label, last_label):
    model = StandInBiEncoder()
    handler = make_handler(tokenizer, model)
    context = FakeContext()

    answers = handler.handle([first, MALFORMED, last], context)

    assert len(answers) == 3
    assert answers[0] == [first_label]
    assert answers[2] == [last_label]
    assert set(answers[1]) == {"error"} and "seq_1" in answers[1]["error"]
    assert context.statuses[1][0] == 400 and "seq_1" in context.statuses[1][1]
    assert 0 not in context.statuses and 2 not in context.statuses
    assert model.calls == [[(4, 16)] * 4]  # one forward pass for the batch-mates
    assert set(context.headers) == {0, 2}


@pytest.mark.parametrize(
    "request_, reason",
    [
        ({"seq_0": bytearray(b"no partner")}, "missing field seq_1"),
        ({"seq_0": bytearray(b"fine"), "seq_1": bytearray(b"  ")}, "seq_1 is empty"),
        ({"seq_0": bytearray(b"\xff\xfe"), "seq_1": bytearray(b"ok")}, "not valid UTF-8"),
        ({"body": {"seq_0": "a" * 20_001, "seq_1": "b"}}, "the limit is 20,000"),
        ({"body": json.dumps({"seq_0": 5, "seq_1": ["x"]}).encode()}, "must be a string"),
    ],
)
def test_each_kind_of_malformed_request_gets_a_400_naming_the_problem(tokenizer, request_, reason):
    context = FakeContext()
    answers = make_handler(tokenizer, StandInBiEncoder()).handle([SAME, request_], context)
    assert answers[0] == ["paraphrase"]
    assert context.statuses[1][0] == 400 and reason in context.statuses[1][1]
    assert reason in answers[1]["error"]


def test_all_requests_malformed_never_runs_the_model(tokenizer):
    model = StandInBiEncoder()
    handler = make_handler(tokenizer, model)
    context = FakeContext()
    answers = handler.handle([MALFORMED, {"body": b"[1]"}], context)
    assert model.calls == []
    assert [code for code, _ in context.statuses.values()] == [400, 400]
    assert all("error" in answer for answer in answers)


def test_a_row_with_nan_or_inf_scores_gets_its_own_500_and_batch_mates_are_answered(tokenizer):
    def poisoned(ids_0, mask_0, ids_1, mask_1):
        scores = StandInBiEncoder()(ids_0, mask_0, ids_1, mask_1)
        scores[1, 0], scores[2, 1] = float("nan"), float("inf")
        return scores

    context = FakeContext()
    answers = make_handler(tokenizer, poisoned).handle([SAME, DIFFERENT, SAME, DIFFERENT], context)

    assert answers[0] == ["paraphrase"] and answers[3] == ["not paraphrase"]
    for index in (1, 2):
        assert "NaN or Inf" in answers[index]["error"]
        assert context.statuses[index][0] == 500
        assert index not in context.headers  # no probability for a row without one
    assert set(context.statuses) == {1, 2}


def test_each_answer_carries_its_probability_and_truncation_headers(tokenizer):
    handler = make_handler(tokenizer, StandInBiEncoder())
    context = FakeContext()
    long_request = {"seq_0": bytearray(LONG.encode()), "seq_1": bytearray(b"short")}
    handler.handle([SAME, long_request, DIFFERENT], context)
    probabilities = [float(context.headers[i]["X-Paraphrase-Probability"]) for i in range(3)]
    assert probabilities[0] == pytest.approx(torch.softmax(torch.tensor([-2.0, 2.0]), 0)[1].item(), abs=1e-6)
    assert probabilities[1] < 0.5 and probabilities[2] < 0.5
    assert [context.headers[i]["X-Truncated"] for i in range(3)] == ["false", "true", "false"]


def test_answers_are_the_models_own_class_names(tokenizer):
    handler = make_handler(tokenizer, StandInBiEncoder(), class_names=("not_equivalent", "equivalent"))
    assert handler.handle([SAME, DIFFERENT], FakeContext()) == [["equivalent"], ["not_equivalent"]]


def test_a_partial_batch_is_padded_to_batch_size_and_the_paddings_results_dropped(tokenizer):
    model = StandInBiEncoder()
    handler = make_handler(tokenizer, model, batch_size=4)
    context = FakeContext()
    answers = handler.handle([DIFFERENT], context)
    assert model.calls == [[(4, 16)] * 4]
    # The three padding rows repeat the request; only its own answer comes back.
    assert answers == [["not paraphrase"]] and set(context.headers) == {0}


def test_sequence_classification_handler_feeds_three_inputs(tokenizer):
    model = StandInPairClassifier()
    handler = make_handler(tokenizer, model, kind="sequence-classification", batch_size=3, max_length=32)
    short = {"body": {"seq_0": "Hi", "seq_1": "Yo"}}
    long = {"body": {"seq_0": "The company is based in New York", "seq_1": "Its offices are in Manhattan"}}
    answers = handler.handle([short, long], FakeContext())
    assert model.calls == [[(3, 32)] * 3]
    assert answers == [["not paraphrase"], ["paraphrase"]]


class Recorder:
    """A stand-in graph for one bucket: remembers the shapes it was called with."""

    def __init__(self):
        self.shapes = []

    def __call__(self, ids_0, mask_0, ids_1, mask_1):
        self.shapes.append(tuple(ids_0.shape))
        return torch.zeros(ids_0.shape[0], 2)


def test_each_batch_runs_in_the_smallest_bucket_that_holds_its_longest_sentence(tokenizer):
    graphs = {8: Recorder(), 16: Recorder(), 32: Recorder()}
    handler = make_handler(tokenizer, None, batch_size=2, max_length=32, models=graphs)
    short = {"seq_0": "Hi there", "seq_1": "Hello"}
    medium = {"seq_0": "The quick brown fox jumps over the lazy dog", "seq_1": "Hello"}
    long = {"seq_0": " ".join(["word"] * 40), "seq_1": "Hello"}
    context = FakeContext()
    handler.handle([short, short], context)
    handler.handle([short, medium], context)
    handler.handle([long], context)
    assert graphs[8].shapes == [(2, 8)] and graphs[16].shapes == [(2, 16)] and graphs[32].shapes == [(2, 32)]
    assert context.headers[0]["X-Truncated"] == "true"  # the long one, cut to max_length 32


class ZeroScores(torch.nn.Module):
    def forward(self, ids_0, mask_0, ids_1, mask_1):
        return torch.zeros(ids_0.shape[0], 2)


@pytest.fixture
def model_dir(tmp_path, tokenizer, monkeypatch):
    """What archive packs into a .mar: model_info.json, one graph per bucket, the tokenizer files."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    info = model_info(batch_size=2, max_length=32, buckets=[8, 16, 32])
    for name in info.model_files.values():
        torch.jit.save(torch.jit.script(ZeroScores()), str(tmp_path / name))
    tokenizer.save_pretrained(str(tmp_path))
    info.write(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "config, loaded",
    [
        ({"handler": {"profile": True}}, [8, 16, 32]),
        ({"handler": {"profile": True, "length_buckets": [32, 16]}}, [16, 32]),
    ],
)
def test_model_config_length_buckets_narrow_the_graphs_loaded(model_dir, config, loaded):
    handler = ParaphraseHandler()
    handler.initialize(FakeContext(config, model_dir))
    assert handler.buckets == loaded and sorted(handler.models) == loaded
    answers = handler.handle([{"seq_0": "Hi there", "seq_1": "Hello"}], FakeContext(config, model_dir))
    assert answers == [["not paraphrase"]]  # zero scores: a tie goes to class 0


def test_torchserve_times_preprocess_inference_and_postprocess_of_every_batch(tokenizer):
    handler = make_handler(tokenizer, StandInBiEncoder())
    context = FakeContext()
    handler.handle([SAME, DIFFERENT], context)
    handler.handle([MALFORMED], context)  # a batch the model never sees is timed too
    names = [name for name, _, _ in context.metrics.times]
    steps = ["ts_handler_preprocess", "ts_handler_inference", "ts_handler_postprocess", "HandlerTime"]
    assert names == steps * 2
    assert all(value >= 0 and unit == "ms" for _, value, unit in context.metrics.times)


def test_without_profile_in_model_config_only_handler_time_is_reported(tokenizer):
    context = FakeContext(model_yaml_config={})
    make_handler(tokenizer, StandInBiEncoder()).handle([SAME], context)
    assert [name for name, _, _ in context.metrics.times] == ["HandlerTime"]


def test_torchserve_can_load_the_handler_module_it_defines_exactly_one_class():
    from ts.utils.util import list_classes_from_module

    assert list_classes_from_module(serving.handler) == [ParaphraseHandler]
