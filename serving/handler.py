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
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from ts.handler_utils.timer import timed
from ts.torch_handler.base_handler import BaseHandler

from serving.claims import CLAIM_WAIT_S, NEURON_CORE_REFUSED, claim_core, record_gpu
from serving.contract import (
    BACKEND_ENV,
    CORE_CLAIMS_ENV,
    FIELDS,
    NEURON_CORES_ENV,
    THREADS_ENV,
    Batch,
    ModelInfo,
    encode_pairs,
    pad_to_batch,
)

logger = logging.getLogger(__name__)

# Longer than max_length is truncated, not refused; but a text this long is not a sentence, and
# tokenizing it would stall the batch it arrived in.
MAX_TEXT_CHARS = 20_000


# TorchServe loads a handler module only if it defines exactly one class, so a bad request is
# a plain ValueError here, and becomes that request's 400 in ParaphraseHandler.postprocess.


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


def prepare_backend(backend: str, gpu_id) -> torch.device:
    """Get the worker ready for a model traced for `backend`; refuse one traced for another."""
    serving = os.environ.get(BACKEND_ENV, backend)
    if backend != serving:
        raise RuntimeError(
            f"this model was traced for backend {backend!r} but the server runs the {serving!r} backend; "
            f"trace it again with serving.backend: {serving}"
        )
    if backend == "neuron":
        pin_neuron_core(gpu_id)
        try:
            import torch_neuronx  # noqa: F401  registers the Neuron ops torch.jit.load needs
        except ImportError:
            raise RuntimeError(
                "this model was traced for neuron, but torch_neuronx is not installed in this worker's environment"
            ) from None
        return torch.device("cpu")  # a Neuron graph takes its inputs on the host
    if backend == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("this model was traced for cuda, but no CUDA GPU is visible to this worker")
        device = torch.device(f"cuda:{gpu_id if gpu_id is not None else 0}")
        if os.environ.get(CORE_CLAIMS_ENV):  # under the pipeline's server: the summary says who got which GPU
            record_gpu(Path(os.environ[CORE_CLAIMS_ENV]), os.getpid(), device.index)
        return device
    return torch.device("cpu")


def pin_neuron_core(gpu_id) -> int | None:
    """One NeuronCore of its own for this worker, set before torch_neuronx loads a graph (the runtime
    takes the visible cores then, until the process exits). Overrides whatever NEURON_RT_* the worker
    inherited: an inherited NEURON_RT_VISIBLE_CORES=0 would put every worker on core 0.

    Under the pipeline's server the core is claimed in CORE_CLAIMS_ENV (claims.claim_core says why not
    gpu_id); elsewhere TorchServe's gpu_id when it gives one (number_of_gpu > 0); else the runtime picks
    a free core (NEURON_RT_NUM_CORES=1, no visible cores named)."""
    claims, cores = os.environ.get(CORE_CLAIMS_ENV), os.environ.get(NEURON_CORES_ENV)
    core: int | None
    if claims and cores:
        core = claim_core(Path(claims), int(cores), os.getpid())
    else:
        core = int(gpu_id) if gpu_id is not None else None
    os.environ["NEURON_RT_NUM_CORES"] = "1"
    if core is None:
        os.environ.pop("NEURON_RT_VISIBLE_CORES", None)
    else:
        os.environ["NEURON_RT_VISIBLE_CORES"] = str(core)
    logger.info("NeuronCore %s for worker pid %d", "chosen by the runtime" if core is None else core, os.getpid())
    return core


def load_graphs(
    model_dir: Path, info: ModelInfo, buckets: list[int], device: torch.device, wait_s: float = CLAIM_WAIT_S
) -> dict:
    """{length: graph} for the buckets served. On Neuron the driver frees a killed worker's core in its
    exit path, a moment after the process is gone, and TorchServe starts the replacement at once: the
    runtime refuses the core meanwhile. So a refusal is retried for up to wait_s; past that the worker
    fails with the runtime's text, and TorchServe starts it again after its back-off."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return {
                length: torch.jit.load(str(model_dir / info.model_files[length]), map_location=device).eval()
                for length in buckets
            }
        except RuntimeError as error:
            if info.backend != "neuron" or not NEURON_CORE_REFUSED.search(str(error)) or time.monotonic() > deadline:
                raise
            logger.warning(
                "NeuronCore %s refused (%s): loading again", os.environ.get("NEURON_RT_VISIBLE_CORES"), error
            )
            time.sleep(0.5)


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
            model = self.models[data.inputs[0].shape[1]]  # the bucket encode_pairs padded to
            with torch.inference_mode():
                data.scores = model(*(t.to(self.device) for t in data.inputs)).cpu()
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


def predictions(scores: torch.Tensor, count: int, class_names: list[str]) -> list[tuple[str, float] | None]:
    """Label and paraphrase probability for the first `count` rows; the rest were padding.

    A row whose scores are NaN or Inf gets None: no label is better than an arbitrary one.
    """
    rows = scores[:count].float()
    finite = torch.isfinite(rows).all(dim=-1).tolist()
    probabilities = torch.softmax(rows, dim=-1)
    labels = probabilities.argmax(dim=-1).tolist()
    return [
        (class_names[label], float(p[1])) if ok else None
        for label, p, ok in zip(labels, probabilities, finite, strict=True)
    ]
