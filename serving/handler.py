"""TorchServe handler for the paraphrase model: runs INSIDE a TorchServe worker.

It ships in the .mar, so it imports torch, transformers, ts and the serving package only -- never flows/ or
tasks/. The model side it shares with the Ray Serve deployment (parsing a request, the backend, the graphs,
the labels) is serving/model.py's; this module is TorchServe's initialize / preprocess / inference /
postprocess around it.

Everything it needs (traced model, tokenizer files, model_info.json) is loaded from the
model directory TorchServe unpacks the .mar into; nothing comes from the hub (the tutorial's
handler downloaded its tokenizer at worker start, which is one reason it broke).

Requests carry a sentence pair as form fields seq_0 / seq_1 (the tutorial's client) or as a
JSON body {"seq_0": ..., "seq_1": ...}. Each answer is ["paraphrase"] or ["not paraphrase"].
A malformed request gets its own 400 and does not disturb the requests batched with it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

from serving.contract import THREADS_ENV, Batch, ModelInfo, encode_pairs, pad_to_batch
from serving.model import load_graphs, parse_request, predictions, prepare_backend, run_graph

logger = logging.getLogger(__name__)


class ParaphraseHandler(BaseHandler):
    """initialize / preprocess / inference / postprocess, as TorchServe's BaseHandler lays out: its
    handle() runs them in turn and records HandlerTime; with `handler: {profile: true}` in
    model-config.yaml, @timed reports each step per batch (ts_handler_preprocess / _inference /
    _postprocess in model_metrics.log). A Batch carries one batch's state from step to step."""

    def initialize(self, context):
        self.context = context
        model_dir = Path(context.system_properties["model_dir"])
        self.info = ModelInfo.read(model_dir)
        threads = int(os.environ.get(THREADS_ENV, "0"))
        if threads > 0:
            # One worker per core: more intra-op threads than that only makes workers fight.
            torch.set_num_threads(threads)
        self.device = prepare_backend(self.info.backend, context.system_properties.get("gpu_id"))
        # One graph per length bucket; model-config.yaml may narrow them (e.g. max_length only).
        wanted = ((getattr(context, "model_yaml_config", None) or {}).get("handler") or {}).get("length_buckets")
        self.buckets = sorted(int(b) for b in wanted) if wanted else self.info.buckets
        self.models = load_graphs(model_dir, self.info, self.buckets, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.class_names = self.info.class_names
        self.initialized = True
        logger.info(
            "loaded buckets %s (%s, %s on %s) batch_size=%s max_length=%s threads=%s",
            self.buckets,
            self.info.kind,
            self.info.backend,
            self.device,
            self.info.batch_size,
            self.info.max_length,
            torch.get_num_threads(),
        )

    @timed
    def preprocess(self, data: list[dict]) -> Batch:
        """Parse every request -- a malformed one is refused on its own, its batch-mates go on -- and
        tokenize the good ones into the smallest bucket, padded up to the traced batch_size."""
        batch = Batch(size=len(data))
        pairs: list[tuple[str, str]] = []
        for index, request in enumerate(data):
            try:
                pairs.append(parse_request(request))
            except ValueError as error:
                logger.warning("request %d refused: %s", index, error)
                batch.errors[index] = str(error)
            else:
                batch.indices.append(index)
        if pairs:
            inputs, batch.truncated = encode_pairs(
                self.tokenizer, self.info.kind, pairs, self.info.max_length, self.buckets
            )
            batch.inputs = pad_to_batch(inputs, self.info.batch_size)
        return batch

    @timed
    def inference(self, data: Batch, *args, **kwargs) -> Batch:
        """One call of the bucket's graph for the whole padded batch; none when every request was refused."""
        if data.inputs:
            data.scores = run_graph(self.models, data.inputs, self.device)
        return data

    @timed
    def postprocess(self, data: Batch) -> list:
        """One answer per request, in TorchServe's order: a label with its probability and truncation
        headers, or an error with its own status. The padding rows' results are dropped."""
        answers: list = [None] * data.size
        for index, message in data.errors.items():
            self.context.set_response_status(code=400, phrase=message, idx=index)
            answers[index] = {"error": message}
        # Scores are there whenever a request reached the model (inference ran on data.inputs).
        results = (
            predictions(data.scores, len(data.indices), self.class_names)
            if data.indices and data.scores is not None
            else []
        )
        for index, result, cut in zip(data.indices, results, data.truncated, strict=True):
            if result is None:
                message = "the model returned NaN or Inf scores for this request"
                logger.error("request %d: %s", index, message)
                self.context.set_response_status(code=500, phrase=message, idx=index)
                answers[index] = {"error": message}
                continue
            label, probability = result
            answers[index] = [label]
            self.context.set_response_header(index, "X-Paraphrase-Probability", f"{probability:.6f}")
            self.context.set_response_header(index, "X-Truncated", "true" if cut else "false")
            if cut:
                logger.info("request %d truncated to max_length=%d", index, self.info.max_length)
        return answers
