"""serving.contract: the graph's inputs are exactly what the tokenizer's own padded encoding gives,
from one tokenizer pass per batch."""

import pytest
import torch

from serving.contract import bucket_for, encode_pairs, pad_to_batch

LONG = " ".join(["paraphrase"] * 60)
BUCKETS = [8, 16, 32]
MAX_LENGTH = 32


def words(count: int) -> str:
    return " ".join(["word"] * count)  # "word" is one token, so a sentence of n words is n + 2 tokens


# Batches whose longest member lands in each bucket, exactly on a bucket's boundary or just over it,
# or past max_length (truncated) -- alone and beside short rows.
BATCHES = {
    "short": [("A short sentence.", "Another short one."), ("Hi", "Yo")],
    "fills the first bucket": [(words(6), "x")],  # 8 tokens alone (bi-encoder), 10 as a pair
    "one over the first bucket": [(words(7), "x"), ("x", "y")],
    "fills max_length": [(words(30), "short"), ("x", words(3))],
    "one over max_length": [(words(31), "short")],
    "pair fills the first bucket": [(words(3), words(2))],  # [CLS] 3 [SEP] 2 [SEP] = 8 tokens
    "pair one over a bucket": [(words(7), words(7))],
    "pair fills max_length": [(words(15), words(14)), ("x", "y")],
    "pair one over max_length": [(words(15), words(15))],
    "over-long beside short": [("Short.", LONG), ("The cat sat.", "A cat was sitting."), (LONG, LONG)],
    "over-long pair, both halves long": [(LONG, words(40))],
}


def reference(tokenizer, kind, pairs, length):
    """The tokenizer's own encoding at the bucket length: what encode_pairs has always returned."""
    options = dict(padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    if kind == "sequence-classification":
        enc = tokenizer(firsts, seconds, **options)
        return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    enc_0, enc_1 = tokenizer(firsts, **options), tokenizer(seconds, **options)
    return enc_0["input_ids"], enc_0["attention_mask"], enc_1["input_ids"], enc_1["attention_mask"]


def full_lengths(tokenizer, kind, pairs):
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    if kind == "sequence-classification":
        return [len(ids) for ids in tokenizer(firsts, seconds)["input_ids"]]
    return [
        max(len(a), len(b))
        for a, b in zip(tokenizer(firsts)["input_ids"], tokenizer(seconds)["input_ids"], strict=True)
    ]


@pytest.fixture(scope="module", params=["fast", "slow"])
def tokenizers(request, tokenizer):
    """The embedded model's tokenizer, fast (what AutoTokenizer loads) and the pure-Python one."""
    if request.param == "fast":
        return tokenizer
    from transformers import BertTokenizer

    from tasks.prepare.trace import embedded_model_dir

    return BertTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)


@pytest.mark.parametrize("kind", ["sequence-classification", "bi-encoder"])
@pytest.mark.parametrize("case", list(BATCHES))
def test_inputs_equal_the_tokenizers_own_padded_encoding(tokenizers, kind, case):
    pairs = BATCHES[case]
    full = full_lengths(tokenizers, kind, pairs)
    length = bucket_for(min(max(full), MAX_LENGTH), BUCKETS)

    inputs, truncated = encode_pairs(tokenizers, kind, pairs, MAX_LENGTH, BUCKETS)

    expected = reference(tokenizers, kind, pairs, length)
    assert len(inputs) == len(expected)
    for got, want in zip(inputs, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape == (len(pairs), length)
        assert torch.equal(got, want)
    assert truncated == [n > MAX_LENGTH for n in full]


@pytest.mark.parametrize("kind", ["sequence-classification", "bi-encoder"])
def test_without_buckets_everything_is_padded_to_max_length(tokenizer, kind):
    pairs = BATCHES["short"]
    inputs, _ = encode_pairs(tokenizer, kind, pairs, 16)
    for got, want in zip(inputs, reference(tokenizer, kind, pairs, 16), strict=True):
        assert torch.equal(got, want)


def test_the_tokenizer_runs_once_per_batch_when_nothing_is_too_long(tokenizer):
    calls = []

    class Counting:
        padding_side, pad_token_id, pad_token_type_id = "right", tokenizer.pad_token_id, tokenizer.pad_token_type_id

        def __call__(self, *args, **kwargs):
            calls.append(kwargs)
            return tokenizer(*args, **kwargs)

    for kind in ("sequence-classification", "bi-encoder"):
        calls.clear()
        encode_pairs(Counting(), kind, BATCHES["short"] * 3, MAX_LENGTH, BUCKETS)
        assert len(calls) == 1 and not calls[0].get("padding")


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
