"""The model side of serving, whatever the server: runs INSIDE a TorchServe worker or a Ray Serve replica.

What both engines' code shares (serving/handler.py for TorchServe, serving/ray_deployment.py for Ray Serve):
reading a request's sentence pair, getting the process ready for the backend the graphs were traced for (one
NeuronCore of its own, a GPU, or threads), loading the graphs, and turning scores into labels. Tokenizing and
padding are serving/contract.py's. It ships beside each engine's entry point (in the .mar, in the Serve package),
so it imports torch and the serving package only -- never ts, ray, flows/ or tasks/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from serving.claims import CLAIM_WAIT_S, NEURON_CORE_REFUSED, claim_core, record_gpu
from serving.contract import BACKEND_ENV, CORE_CLAIMS_ENV, FIELDS, NEURON_CORES_ENV, ModelInfo

logger = logging.getLogger(__name__)

# Longer than max_length is truncated, not refused; but a text this long is not a sentence, and
# tokenizing it would stall the batch it arrived in.
MAX_TEXT_CHARS = 20_000


# A bad request is a plain ValueError here (TorchServe loads a handler module only if it defines exactly one
# class, so no error class of our own): the engine's side turns it into that request's 400.


def parse_request(request: dict) -> tuple[str, str]:
    """Pull (seq_0, seq_1) out of one request, from form fields or a JSON body: TorchServe's shape of a request
    (the fields by name, or the raw bytes under "body"), which the Ray Serve deployment builds alike."""
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


def prepare_backend(backend: str, gpu_id, pin: Callable[[Any], int | None] | None = None) -> torch.device:
    """Get the worker ready for a model traced for `backend`; refuse one traced for another.

    pin: how a Neuron worker gets its NeuronCore before torch_neuronx loads (default pin_neuron_core, the
    TorchServe way); a Ray Serve replica passes its own, Ray having chosen the core already."""
    serving = os.environ.get(BACKEND_ENV, backend)
    if backend != serving:
        raise RuntimeError(
            f"this model was traced for backend {backend!r} but the server runs the {serving!r} backend; "
            f"trace it again with serving.backend: {serving}"
        )
    if backend == "neuron":
        (pin or pin_neuron_core)(gpu_id)
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


def run_graph(models: dict, inputs: tuple, device: torch.device) -> torch.Tensor:
    """One call of the bucket's graph for a whole padded batch (the bucket is the length encode_pairs padded to);
    the scores come back on the host, padding rows included."""
    model = models[inputs[0].shape[1]]
    with torch.inference_mode():
        return model(*(t.to(device) for t in inputs)).cpu()


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
