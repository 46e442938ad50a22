"""TorchServe handler for the paraphrase model: runs INSIDE a TorchServe worker.

It ships in the .mar, so it imports torch, transformers and ts only -- never flows/ or tasks/.
Everything it needs (traced model, tokenizer files, model_info.json) is loaded from the
model directory TorchServe unpacks the .mar into; nothing comes from the hub (the tutorial's
handler downloaded its tokenizer at worker start, which is one reason it broke).

Requests carry a sentence pair as form fields seq_0 / seq_1 (the tutorial's client) or as a
JSON body {"seq_0": ..., "seq_1": ...}. Each answer is ["paraphrase"] or ["not paraphrase"].
A malformed request gets its own 400 and does not disturb the requests batched with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

MODEL_INFO_FILE = "model_info.json"
THREADS_ENV = "BERT_THREADS_PER_WORKER"
BACKEND_ENV = "BERT_BACKEND"  # the backend this server was started for (set by the pipeline)
FIELDS = ("seq_0", "seq_1")
# Longer than max_length is truncated, not refused; but a text this long is not a sentence, and
# tokenizing it would stall the batch it arrived in.
MAX_TEXT_CHARS = 20_000


# TorchServe loads a handler module only if it defines exactly one class, so a bad request is
# a plain ValueError here, and becomes that request's 400 in ParaphraseHandler.handle.


def parse_request(request: dict) -> tuple[str, str]:
    """Pull (seq_0, seq_1) out of one TorchServe request, from form fields or a JSON body."""
    fields = request
    if not any(name in request for name in FIELDS) and "body" in request:
        fields = _json_fields(request["body"])
    texts = []
    for name in FIELDS:
        if name not in fields or fields[name] is None:
            raise ValueError(f"missing field {name}: send seq_0 and seq_1 (form fields or JSON)")
        texts.append(_text(name, fields[name]))
    return texts[0], texts[1]


def _json_fields(body) -> dict:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"body is not JSON ({error}); send seq_0 and seq_1") from None
    if not isinstance(body, dict):
        raise ValueError(f"JSON body must be an object with seq_0 and seq_1, not {type(body).__name__}")
    return body


def _text(name: str, value) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not valid UTF-8 text") from None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} is {len(value):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return value


def encode_pairs(tokenizer, kind: str, pairs: list[tuple[str, str]], max_length: int, buckets=None):
    """Tokenize pairs into the traced module's inputs, padded to the smallest bucket that holds them.

    sequence-classification: one pair encoding [CLS] a [SEP] b [SEP] -> (ids, mask, token types).
    bi-encoder: each sentence on its own -> (ids_0, mask_0, ids_1, mask_1).
    Texts longer than max_length are truncated to it. buckets: the traced lengths (default
    max_length only). Returns the tensors and, per pair, whether anything was truncated.
    """
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    if kind == "sequence-classification":
        full = [len(ids) for ids in tokenizer(firsts, seconds, truncation=False)["input_ids"]]
    else:
        lengths = zip(tokenizer(firsts)["input_ids"], tokenizer(seconds)["input_ids"])
        full = [max(len(a), len(b)) for a, b in lengths]
    longest = min(max(full), max_length)
    length = min((b for b in buckets or [max_length] if b >= longest), default=max_length)
    options = dict(padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    truncated = [n > max_length for n in full]
    if kind == "sequence-classification":
        enc = tokenizer(firsts, seconds, **options)
        return (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), truncated
    enc_0, enc_1 = tokenizer(firsts, **options), tokenizer(seconds, **options)
    return (enc_0["input_ids"], enc_0["attention_mask"], enc_1["input_ids"], enc_1["attention_mask"]), truncated


def pad_to_batch(inputs: tuple[torch.Tensor, ...], batch_size: int) -> tuple[torch.Tensor, ...]:
    """Fill a partial batch up to the traced batch_size by repeating the first row.

    A traced graph has a static batch dimension. Repeating a real row (rather than all-padding
    rows) keeps mean pooling away from a zero mask. The padding's results are dropped later.
    """
    rows = inputs[0].shape[0]
    if rows == batch_size:
        return inputs
    if rows > batch_size:
        raise ValueError(f"{rows} requests in one batch but the model was traced for {batch_size}")
    return tuple(torch.cat([t, t[:1].expand(batch_size - rows, *t.shape[1:])]) for t in inputs)


def prepare_backend(backend: str, gpu_id) -> torch.device:
    """Get the worker ready for a model traced for `backend`; refuse one traced for another."""
    serving = os.environ.get(BACKEND_ENV, backend)
    if backend != serving:
        raise RuntimeError(
            f"this model was traced for backend {backend!r} but the server runs the {serving!r} backend; "
            f"trace it again with serving.backend: {serving}"
        )
    if backend == "neuron":
        # Each worker process takes one NeuronCore of its own from the Neuron runtime.
        os.environ.setdefault("NEURON_RT_NUM_CORES", "1")
        try:
            import torch_neuronx  # noqa: F401  registers the Neuron ops torch.jit.load needs
        except ImportError:
            raise RuntimeError("this model was traced for neuron, but torch_neuronx is not installed "
                               "in this worker's environment") from None
        return torch.device("cpu")  # a Neuron graph takes its inputs on the host
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("this model was traced for cuda, but no CUDA GPU is visible to this worker")
        return torch.device(f"cuda:{gpu_id if gpu_id is not None else 0}")
    return torch.device("cpu")


class ParaphraseHandler(BaseHandler):
    """initialize / preprocess / inference / postprocess, as TorchServe's BaseHandler lays out."""

    def initialize(self, context):
        self.context = context
        model_dir = Path(context.system_properties["model_dir"])
        self.info = json.loads((model_dir / MODEL_INFO_FILE).read_text())
        threads = int(os.environ.get(THREADS_ENV, "0"))
        if threads > 0:
            # One worker per core: more intra-op threads than that only makes workers fight.
            torch.set_num_threads(threads)
        self.device = prepare_backend(self.info.get("backend", "cpu"), context.system_properties.get("gpu_id"))
        # One graph per length bucket; model-config.yaml may narrow them (e.g. max_length only).
        wanted = ((getattr(context, "model_yaml_config", None) or {}).get("handler") or {}).get("length_buckets")
        files = {int(length): name for length, name in self.info["model_files"].items()}
        self.buckets = sorted(int(b) for b in wanted) if wanted else sorted(files)
        self.models = {
            length: torch.jit.load(str(model_dir / files[length]), map_location=self.device).eval()
            for length in self.buckets
        }
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.class_names = self.info["class_names"]
        self.initialized = True
        logger.info(
            "loaded buckets %s (%s, %s on %s) batch_size=%s max_length=%s threads=%s",
            self.buckets, self.info["kind"], self.info.get("backend", "cpu"), self.device, self.info["batch_size"],
            self.info["max_length"], torch.get_num_threads(),
        )

    def preprocess(self, pairs: list[tuple[str, str]]):
        inputs, truncated = encode_pairs(self.tokenizer, self.info["kind"], pairs, self.info["max_length"], self.buckets)
        return pad_to_batch(inputs, self.info["batch_size"]), truncated

    def inference(self, inputs, *args, **kwargs) -> torch.Tensor:
        model = self.models[inputs[0].shape[1]]  # the bucket encode_pairs padded to
        with torch.inference_mode():
            return model(*(t.to(self.device) for t in inputs)).cpu()

    def postprocess(self, scores: torch.Tensor, count: int) -> list[tuple[str, float] | None]:
        """Label and paraphrase probability for the first `count` rows; the rest were padding.

        A row whose scores are NaN or Inf gets None: no label is better than an arbitrary one.
        """
        rows = scores[:count].float()
        finite = torch.isfinite(rows).all(dim=-1).tolist()
        probabilities = torch.softmax(rows, dim=-1)
        labels = probabilities.argmax(dim=-1).tolist()
        return [(self.class_names[label], float(p[1])) if ok else None
                for label, p, ok in zip(labels, probabilities, finite)]

    def handle(self, data, context):
        self.context = context
        answers: list = [None] * len(data)
        good: list[int] = []
        pairs: list[tuple[str, str]] = []
        for index, request in enumerate(data):
            try:
                pairs.append(parse_request(request))
                good.append(index)
            except ValueError as error:
                logger.warning("request %d refused: %s", index, error)
                context.set_response_status(code=400, phrase=str(error), idx=index)
                answers[index] = {"error": str(error)}
        if pairs:
            inputs, truncated = self.preprocess(pairs)
            scores = self.inference(inputs)
            for index, result, cut in zip(good, self.postprocess(scores, len(pairs)), truncated):
                if result is None:
                    message = "the model returned NaN or Inf scores for this request"
                    logger.error("request %d: %s", index, message)
                    context.set_response_status(code=500, phrase=message, idx=index)
                    answers[index] = {"error": message}
                    continue
                label, probability = result
                answers[index] = [label]
                context.set_response_header(index, "X-Paraphrase-Probability", f"{probability:.6f}")
                context.set_response_header(index, "X-Truncated", "true" if cut else "false")
                if cut:
                    logger.info("request %d truncated to max_length=%d", index, self.info["max_length"])
        return answers
