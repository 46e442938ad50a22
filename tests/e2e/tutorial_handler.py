"""A handler in the form of the Neuron BERT TorchServe tutorial's handler_bert.py, for the --mar tests.

It is deliberately not ours: it imports nothing from this project, reads its tokenizer from the archive
(the tutorial downloaded it from the hub), pads every request to max_length and answers the label text
only -- no X-Paraphrase-Probability, no X-Truncated. Its graph is the embedded model's bi-encoder, traced
by this project (four inputs: ids and mask of each sentence).
"""

import os
from abc import ABC

import torch
from transformers import AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

MAX_LENGTH = int(os.environ.get("TUTORIAL_MAX_LENGTH", "128"))
BATCH_SIZE = int(os.environ.get("TUTORIAL_BATCH_SIZE", "6"))
CLASSES = ["not paraphrase", "paraphrase"]


class BertEmbeddingHandler(BaseHandler, ABC):
    def initialize(self, ctx):
        model_dir = ctx.system_properties.get("model_dir")
        serialized_file = ctx.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized_file))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.initialized = True

    def preprocess(self, input_data):
        first, second = [], []
        for row in input_data:
            first.append(row.get("seq_0").decode("utf-8"))
            second.append(row.get("seq_1").decode("utf-8"))
        self.count = len(first)
        pad = BATCH_SIZE - len(first)  # the graph is traced at a fixed batch: pad it

        def encode(texts):
            return self.tokenizer(
                texts + [""] * pad, max_length=MAX_LENGTH, padding="max_length", truncation=True, return_tensors="pt"
            )

        a, b = encode(first), encode(second)
        return a["input_ids"], a["attention_mask"], b["input_ids"], b["attention_mask"]

    def inference(self, inputs):
        with torch.no_grad():
            return self.model(*inputs)

    def postprocess(self, inference_output):
        labels = inference_output.argmax(-1).tolist()[: self.count]
        return [CLASSES[label] for label in labels]
