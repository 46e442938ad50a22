"""The tutorial's other model kind -- a BERT sequence-classification checkpoint from a local
directory -- through trace, archive, start, register and real TorchServe requests.

No such checkpoint can be downloaded here, so the test builds a tiny randomly initialised
BertForSequenceClassification. Its labels are arbitrary, so the test compares the served
answers with the same model run in-process, rather than with the tutorial's expected labels.
"""

import httpx
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from serving.contract import encode_pairs
from tasks.common.config import ModelConfig, ServingConfig, resolve_serving
from tasks.prepare.archive import archive
from tasks.prepare.trace import PairClassifier, embedded_model_dir, trace
from tasks.serve.register import register
from tasks.serve.server import start, stop, wait_healthy
from tests.e2e.conftest import assert_server_gone

pytestmark = pytest.mark.e2e

PAIRS = [
    ("The company HuggingFace is based in New York City", "HuggingFace's headquarters are situated in Manhattan"),
    ("The company HuggingFace is based in New York City", "Apples are especially bad for your health"),
    ("Shares rose 5 percent on Monday.", "On Monday the stock gained five percent."),
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bert-mrpc")
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, PairClassifier(model).eval(), tokenizer


def test_sequence_classification_checkpoint_serves_what_it_computes_in_process(tiny_checkpoint, tmp_path):
    directory, in_process, tokenizer = tiny_checkpoint
    traced = trace(
        ModelConfig(source=str(directory)), batch_size=4, max_length=32, buckets=[], out_dir=tmp_path / "model"
    )
    assert traced.info.kind == "sequence-classification"
    mar = archive(traced, tmp_path / "model_store")
    assert mar.model_name == "bert-max_length32-batch_size4"

    serving = ServingConfig(batch_size=4, max_length=32, free_ports=True, max_batch_delay=20, initial_workers=1)
    server = start(serving, resolve_serving(serving), mar.model_store, tmp_path / "server")
    try:
        wait_healthy(server, timeout=120)
        register(server, mar, max_batch_delay=20, workers=1)
        url = f"{server.inference_url}/predictions/{mar.model_name}"
        headers = server.inference_headers()
        served = [httpx.post(url, json={"seq_0": a, "seq_1": b}, headers=headers, timeout=60) for a, b in PAIRS]
    finally:
        stop(server)
    assert_server_gone(server)

    inputs, _ = encode_pairs(tokenizer, "sequence-classification", PAIRS, 32)
    with torch.inference_mode():
        expected = in_process(*inputs).argmax(-1).tolist()
    names = ["not paraphrase", "paraphrase"]
    assert [answer.status_code for answer in served] == [200, 200, 200]
    assert [answer.json() for answer in served] == [[names[label]] for label in expected]
