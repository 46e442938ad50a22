"""Ray Serve deployment of the paraphrase model: runs INSIDE a Ray Serve replica.

It ships in the Serve package (tasks/engines/ray/package.py) beside serving/model.py, contract.py and claims.py,
and imports torch, transformers, starlette, ray.serve and the serving package only -- never flows/ or tasks/.
Everything it loads (graphs, tokenizer files, model_info.json) is in the package's model directory: nothing is
downloaded when a replica starts.

The HTTP contract is the TorchServe handler's, so the check stage and the load generator run unchanged: a pair as
form fields seq_0 / seq_1 or a JSON body, answered ["paraphrase"] / ["not paraphrase"] with X-Paraphrase-
Probability and X-Truncated; a malformed request gets its own 400 before it joins a batch, so its batch-mates
never see it; a request without the run's inference token gets 401. Ray Serve's HTTP proxy does not check
tokens itself -- RAY_AUTH_MODE=token guards Ray's control plane (GCS, dashboard and job APIs), not the
applications' routes (docs.ray.io, ray-core/internals/token-authentication) -- so the replica does.

Batching is Ray Serve's @serve.batch, set to the traced batch_size and the run's max_batch_delay (TorchServe's
batch_size and max_batch_delay): a batch goes when it is full or when its first request has waited that long.
The graph runs in a thread of its own, so the replica's event loop keeps taking requests while a batch is on it.

Where @serve.batch and TorchServe differ: TorchServe's frontend forms a batch when a worker is free to take it;
Serve's batch queue forms the next batch as soon as the current one starts, then holds it until the model is
free (ray/serve/batching.py, _BatchQueue._process_batches: wait_for_batch, then the max_concurrent_batches
semaphore). With a max_batch_delay shorter than one batch on the model (5 ms against ~300 ms here), that batch
closes with the one or two requests that came in its first 5 ms, and so does each after it: measured at 64
clients, 1.75 requests per batch of 6 (179 of 279 batches held one), each batch costing a full one's CPU. So,
with admit_when_idle, a request joins the batch queue through a BatchGate (serving/batch_gate.py): none while a
batch is on the model, up to batch_size of those that waited once it is done -- the next batch forms from them,
when the model can take it, as TorchServe's does (then 486 of 490 batches were full).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from transformers import AutoTokenizer

from serving.batch_gate import BatchGate
from serving.claims import record_core
from serving.contract import THREADS_ENV, ModelInfo, encode_pairs, pad_to_batch
from serving.model import load_graphs, parse_request, predictions, prepare_backend, run_graph

logger = logging.getLogger(__name__)

FORM = "application/x-www-form-urlencoded"
WARM_UP_PAIR = ("A replica answers once before it is counted.", "It runs its graph at start.")
# The decorator's own until __init__ sets the model's: the traced batch_size and the run's max_batch_delay.
DEFAULT_BATCH_SIZE, DEFAULT_WAIT_S = 8, 0.005

Answer = tuple[str, float, bool] | None  # label, paraphrase probability, truncated; None: NaN / Inf scores


def neuron_core_from_ray(claims_dir: Path | None):
    """The replica's `pin` for serving/model.prepare_backend: Ray has already chosen its NeuronCore (a replica
    asking `neuron_cores: 1` gets NEURON_RT_VISIBLE_CORES set to its core by Ray's NeuronAcceleratorManager,
    ray/_private/accelerators/neuron.py), so nothing is claimed by search as TorchServe's workers do; the core is
    only recorded where the core map and the ceiling's spare core read claims."""

    def pin(_gpu_id) -> int:
        visible = os.environ.get("NEURON_RT_VISIBLE_CORES", "")
        if not visible.isdigit():
            raise RuntimeError(
                f"Ray gave this replica NeuronCores {visible!r}; one each is expected: deploy with neuron_cores: 1"
            )
        os.environ.pop("NEURON_RT_NUM_CORES", None)  # the visible core says it all; an inherited count may not agree
        if claims_dir is not None:
            record_core(claims_dir, int(visible), os.getpid())
        logger.info("NeuronCore %s (from Ray) for replica pid %d", visible, os.getpid())
        return int(visible)

    return pin


def _unit(backend: str, threads: int) -> str:
    if backend == "neuron":
        return f"NeuronCore {os.environ.get('NEURON_RT_VISIBLE_CORES')}"
    if backend == "cuda":
        import ray

        return f"GPU {','.join(str(gpu) for gpu in ray.get_gpu_ids())}"
    return f"CPU ({threads} threads)"


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    """An error in TorchServe's shape ({"code", "type", "message"}), which the check stage's client reads."""
    return JSONResponse({"code": status, "type": kind, "message": message}, status_code=status)


def form_fields(body: bytes) -> dict[str, bytes]:
    """An urlencoded form's fields with their values as bytes, percent-decoded: a value that is not UTF-8 is then
    refused as such by parse_request, as TorchServe passes form values on (urllib's parse_qsl would decode it
    with replacement characters, or fail on the ASCII round trip for bytes)."""
    fields = {}
    for part in body.split(b"&"):
        name, _, value = part.partition(b"=")
        if name:
            fields[unquote_to_bytes(name.replace(b"+", b" ")).decode("latin-1")] = unquote_to_bytes(
                value.replace(b"+", b" ")
            )
    return fields


async def request_fields(request: Request) -> dict:
    """The request as the model side reads it (serving/model.parse_request): form fields by name, else the body."""
    body = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM:
        return form_fields(body)
    return {"body": body}


class ParaphraseReplica:
    """One replica: the graphs on its NeuronCore / GPU / CPU threads, its tokenizer, and its batch queue."""

    def __init__(
        self,
        model_dir: str,
        key_file: str | None,
        max_batch_delay: int,
        records_dir: str,
        claims_dir: str | None,
        admit_when_idle: bool = True,
    ):
        started = time.monotonic()
        self.info = ModelInfo.read(Path(model_dir))
        threads = int(os.environ.get(THREADS_ENV, "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        pin = neuron_core_from_ray(Path(claims_dir) if claims_dir else None)
        self.device = prepare_backend(self.info.backend, None, pin=pin)
        self.buckets = self.info.buckets
        self.models = load_graphs(Path(model_dir), self.info, self.buckets, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.key = json.loads(Path(key_file).read_text())["inference"]["key"] if key_file else None
        batching: Any = self.answer  # @serve.batch's wrapper, which carries the queue's setters
        batching.set_max_batch_size(self.info.batch_size)
        batching.set_batch_wait_timeout_s(max_batch_delay / 1000)
        self.graph_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph")
        self.gate = BatchGate(self.info.batch_size) if admit_when_idle else None
        self.run_batch([WARM_UP_PAIR])  # a replica that cannot answer fails here, and Serve says why
        load_ms = (time.monotonic() - started) * 1000
        record = {"pid": os.getpid(), "unit": _unit(self.info.backend, torch.get_num_threads()), "load_ms": load_ms}
        Path(records_dir).mkdir(parents=True, exist_ok=True)
        (Path(records_dir) / f"{os.getpid()}.json").write_text(json.dumps(record))
        logger.info("replica ready: %s", record)

    def authorized(self, request: Request) -> bool:
        if self.key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key.encode())

    async def __call__(self, request: Request) -> Response:
        if not self.authorized(request):
            return error_response(401, "Unauthorized", "missing or wrong inference token: send Authorization: Bearer")
        try:
            pair = parse_request(await request_fields(request))
        except ValueError as error:
            logger.warning("request refused: %s", error)
            return error_response(400, "BadRequest", str(error))
        if self.gate is None:
            answer = await self.answer((None, pair))
        else:
            ticket = await self.gate.admit()  # a batch on the model: join the next, formed as this one ends
            try:
                answer = await self.answer((ticket, pair))
            finally:
                await self.gate.leave(ticket)  # cancelled before its batch: its place is given back
        if answer is None:
            return error_response(500, "InternalServerError", "the model returned NaN or Inf scores for this request")
        label, probability, truncated = answer
        headers = {"X-Paraphrase-Probability": f"{probability:.6f}", "X-Truncated": "true" if truncated else "false"}
        return JSONResponse([label], headers=headers)

    @serve.batch(max_batch_size=DEFAULT_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_WAIT_S)
    async def answer(self, requests: list[tuple[object | None, tuple[str, str]]]) -> list[Answer]:
        """One batch: (ticket, pair) per request, the ticket its BatchGate's (None without one)."""
        pairs = [pair for _, pair in requests]
        on_model = self.gate.batch(t for t, _ in requests) if self.gate else contextlib.nullcontext()
        async with on_model:
            return await asyncio.get_running_loop().run_in_executor(self.graph_thread, self.run_batch, pairs)

    def run_batch(self, pairs: list[tuple[str, str]]) -> list[Answer]:
        """Tokenize into the smallest bucket, pad to the traced batch_size, one call of the graph, labels."""
        inputs, truncated = encode_pairs(self.tokenizer, self.info.kind, pairs, self.info.max_length, self.buckets)
        scores = run_graph(self.models, pad_to_batch(inputs, self.info.batch_size), self.device)
        results = predictions(scores, len(pairs), self.info.class_names)
        return [None if r is None else (r[0], r[1], cut) for r, cut in zip(results, truncated, strict=True)]
