import json

import pytest
import torch

from serving.handler import ParaphraseHandler, encode_pairs, pad_to_batch, parse_request

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


# --- encode_pairs / pad_to_batch --------------------------------------------------------

def test_bi_encoder_inputs_and_truncation(tokenizer):
    pairs = [("A short sentence.", "Another short one."), ("Short.", LONG)]
    inputs, truncated = encode_pairs(tokenizer, "bi-encoder", pairs, 16)
    assert len(inputs) == 4
    assert all(t.shape == (2, 16) for t in inputs)
    assert truncated == [False, True]
    ids_0, mask_0, ids_1, mask_1 = inputs
    # Each sentence is encoded on its own: the two sides differ, padding is masked out.
    assert not torch.equal(ids_0, ids_1)
    assert mask_0[0].sum() < 16 and mask_1[1].sum() == 16


def test_bi_encoder_truncation_flag_for_long_first_sentence(tokenizer):
    _, truncated = encode_pairs(tokenizer, "bi-encoder", [(LONG, "short")], 16)
    assert truncated == [True]


def test_sequence_classification_inputs(tokenizer):
    pairs = [("The cat sat.", "A cat was sitting."), ("x", "y"), (LONG, "z")]
    inputs, truncated = encode_pairs(tokenizer, "sequence-classification", pairs, 16)
    assert len(inputs) == 3
    assert all(t.shape == (3, 16) for t in inputs)
    ids, mask, token_types = inputs
    # One pair per row: the second sentence is segment 1.
    assert token_types[0].max() == 1
    assert truncated == [False, False, True]


def test_pad_to_batch_repeats_first_row():
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    padded = pad_to_batch((ids, mask), 4)
    assert [t.shape for t in padded] == [(4, 3), (4, 3)]
    assert torch.equal(padded[0][:2], ids)
    assert torch.equal(padded[0][2], ids[0]) and torch.equal(padded[0][3], ids[0])
    assert torch.equal(padded[1][3], mask[0])


def test_pad_to_batch_leaves_full_batch_alone():
    inputs = (torch.arange(8).reshape(4, 2),)
    assert pad_to_batch(inputs, 4) is inputs


def test_pad_to_batch_refuses_more_rows_than_traced():
    with pytest.raises(ValueError, match="5 requests"):
        pad_to_batch((torch.zeros(5, 3),), 4)


# --- ParaphraseHandler.handle -----------------------------------------------------------

class FakeContext:
    def __init__(self):
        self.statuses = {}
        self.headers = {}

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


def make_handler(tokenizer, model, kind="bi-encoder", batch_size=4, max_length=16, models=None):
    handler = ParaphraseHandler()
    handler.info = {"kind": kind, "batch_size": batch_size, "max_length": max_length,
                    "class_names": ["not paraphrase", "paraphrase"]}
    handler.class_names = handler.info["class_names"]
    handler.models = models or {max_length: model}
    handler.buckets = sorted(handler.models)
    handler.device = torch.device("cpu")
    handler.tokenizer = tokenizer
    handler.initialized = True
    return handler


SAME = {"seq_0": bytearray(b"The sky is blue"), "seq_1": bytearray(b"The sky is blue")}
DIFFERENT = {"seq_0": bytearray(b"The sky is blue"), "seq_1": bytearray(b"Apples are bad for you")}
MALFORMED = {"seq_0": bytearray(b"no partner")}


@pytest.mark.parametrize("first, last, first_label, last_label", [
    (SAME, DIFFERENT, "paraphrase", "not paraphrase"),
    (DIFFERENT, SAME, "not paraphrase", "paraphrase"),
])
def test_bad_request_gets_its_own_400_and_others_are_answered(tokenizer, first, last, first_label, last_label):
    model = StandInBiEncoder()
    handler = make_handler(tokenizer, model)
    results = []
    original = handler.postprocess
    handler.postprocess = lambda scores, count: results.append(original(scores, count)) or results[-1]
    context = FakeContext()

    answers = handler.handle([first, MALFORMED, last], context)

    assert len(answers) == 3
    assert answers[0] == [first_label]
    assert answers[2] == [last_label]
    assert set(answers[1]) == {"error"} and "seq_1" in answers[1]["error"]
    assert context.statuses[1][0] == 400 and "seq_1" in context.statuses[1][1]
    assert 0 not in context.statuses and 2 not in context.statuses
    # One forward pass, padded up to the traced batch size of 4.
    assert model.calls == [[(4, 16)] * 4]
    # Only the two good requests' results come back from the padded batch.
    assert len(results) == 1 and len(results[0]) == 2
    assert set(context.headers) == {0, 2}
    for index, label in ((0, first_label), (2, last_label)):
        probability = float(context.headers[index]["X-Paraphrase-Probability"])
        assert (probability > 0.5) == (label == "paraphrase")
        assert context.headers[index]["X-Truncated"] == "false"


def test_all_requests_malformed_never_runs_the_model(tokenizer):
    model = StandInBiEncoder()
    handler = make_handler(tokenizer, model)
    context = FakeContext()
    answers = handler.handle([MALFORMED, {"body": b"[1]"}], context)
    assert model.calls == []
    assert [code for code, _ in context.statuses.values()] == [400, 400]
    assert all("error" in answer for answer in answers)


def test_truncated_request_is_flagged_in_its_header(tokenizer):
    handler = make_handler(tokenizer, StandInBiEncoder())
    context = FakeContext()
    long_request = {"seq_0": bytearray(LONG.encode()), "seq_1": bytearray(b"short")}
    handler.handle([SAME, long_request], context)
    assert context.headers[0]["X-Truncated"] == "false"
    assert context.headers[1]["X-Truncated"] == "true"


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
