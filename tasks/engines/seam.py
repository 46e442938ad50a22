"""The engine seam: the seven things a serving engine does for a night, and the small typed things they pass.

The night is engine-neutral except where a server is involved (../shared/design.md, "Engines"). trace, check,
benchmark and report speak HTTP to "the served model" and never name an engine: a sentence pair as form fields
seq_0 / seq_1 (or a JSON body) POSTed to {inference_url}/predictions/{model_name} with the run's bearer token;
the answer ["paraphrase"] or ["not paraphrase"] with the headers X-Paraphrase-Probability and X-Truncated; a 4xx
of its own for a malformed request, its batch-mates answered; a refusal without the token. What does name an
engine is here, one implementation per folder:

    package    the traced graph(s), the serving code and the tokenizer files, packed for the engine (a .mar;
               a Serve package): nothing is downloaded when a worker or replica starts
    start      a server of the run's own: loopback only, token authentication on, its processes recorded in
               the run directory so that stop -- or a later run, after a crash -- finds them
    deploy     the package at the batch_size it was traced for, the run's max_batch_delay and replica count
    ready      every replica answers (has loaded and run its graph), each on a unit of its own: a NeuronCore,
               a GPU (or a share of one), a CPU worker's threads
    endpoints  where the served model answers and the header that carries the token
    metrics    the engine's own account of a load window (queueing, batching, handler time) and of the model's
               load; a figure an engine does not have is absent (None), never made up. A window runs from a
               mark (taken as the measured load begins: an engine whose figures are cumulative counters reads
               them then) to the call
    stop       everything start started, stopped -- on success, failure, Ctrl-C or SIGTERM -- nothing left

torchserve/ wraps the stages' own TorchServe functions (tasks/prepare/archive.py, tasks/serve/server.py,
register.py, placement.py, tasks/measure/server_metrics.py) without moving them; ray/ is Ray Serve's.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import psutil
from pydantic import BaseModel, SecretStr

from serving.contract import ModelInfo
from tasks.common.config import EngineName, ServingConfig
from tasks.common.errors import PipelineError
from tasks.common.processes import ProcessRef, Stopped
from tasks.common.sizing import ResolvedServing
from tasks.measure.results import Figures, Mark
from tasks.serve.placement import CoreMap, GpuMap

if TYPE_CHECKING:
    from tasks.prepare.trace import TracedModel

ENGINES: tuple[EngineName, ...] = typing.get_args(EngineName)
KEY_FILE = "key_file.json"  # in the server's directory, 0600: {"inference": {"key": ...}, ...} (TorchServe's shape)


class EngineError(PipelineError):
    """An engine could not do what the night asked of it; the message says why, `fix` what to do."""


class Package(BaseModel):
    """What an engine serves: the traced model packed its way, and the model's facts (model_info.json)."""

    engine: EngineName
    model_name: str  # the tutorial's bert-max_length{L}-batch_size{B}: the URL path the model answers at
    path: Path  # the .mar file, or the Serve package's directory
    info: ModelInfo


def read_inference_key(key_file: Path) -> SecretStr:
    """The inference token from a key file in TorchServe's shape (both engines write or read that shape)."""
    return SecretStr(json.loads(Path(key_file).read_text())["inference"]["key"])


class Endpoints(BaseModel):
    """Where the served model answers, and how a client proves it may ask. No token in it: only its file."""

    inference_url: str  # http://127.0.0.1:8080; the model answers at {inference_url}/predictions/{model_name}
    key_file: Path | None = None  # the inference token's file (0600); None: token authentication off
    # The status the engine refuses a request without the right token with: TorchServe 0.12 answers 400
    # (InvalidKeyException), Ray Serve's replicas 401 (serving/ray_deployment.py). The check stage holds each to
    # its own.
    refused_with: int = 401

    def predictions_url(self, model_name: str) -> str:
        return f"{self.inference_url}/predictions/{model_name}"

    def inference_headers(self) -> dict[str, str]:
        if self.key_file is None:
            return {}
        return {"Authorization": f"Bearer {read_inference_key(self.key_file).get_secret_value()}"}


class Started(BaseModel):
    """A running server of this run's: where it answers, where its files are, which processes are its."""

    engine: EngineName
    server_dir: Path
    endpoints: Endpoints
    owner: ProcessRef | None = None  # the pipeline process that started it
    processes: list[ProcessRef] = []
    management_url: str | None = None  # TorchServe's management API; Ray Serve exposes none

    # The two things the check stage's client (tasks/serve/clients.Inference) and the benchmark's load read
    # from a server, so they run unchanged against any engine.
    @property
    def inference_url(self) -> str:
        return self.endpoints.inference_url

    def inference_headers(self) -> dict[str, str]:
        return self.endpoints.inference_headers()

    @property
    def engine_name(self) -> str:
        return self.engine

    @property
    def refused_with(self) -> int | None:
        """What a request without the token gets; None: token authentication is off."""
        return self.endpoints.refused_with if self.endpoints.key_file is not None else None


class Deployment(BaseModel):
    """The model as deployed: its batching and how many replicas serve it."""

    model_name: str
    batch_size: int  # the traced batch_size: the largest batch the engine forms
    max_batch_delay: int  # ms the engine waits to fill a batch
    replicas: int
    action: str  # what it took: "registered", "scaled existing", "re-registered" (TorchServe), "deployed"
    seconds: float | None = None  # from the deploy request to every replica ready, where the engine measured it


class Replica(BaseModel):
    """One replica (a TorchServe worker, a Ray Serve replica) that answers, and where it runs."""

    pid: int
    unit: str  # "NeuronCore 1", "GPU 0", "CPU (3 threads)"
    load_ms: float | None = None  # its own start and model load, as it measured them; None: not known


S = TypeVar("S", bound=Started)


class Engine(Protocol[S]):
    """What an engine implements; S is its own record of a started server (a Started with what it needs more)."""

    name: EngineName
    label: str  # as a reader knows it: "TorchServe", "Ray Serve"

    def package(self, traced: TracedModel, store: Path) -> Package: ...

    def start(self, serving: ServingConfig, resolved: ResolvedServing, package: Package, server_dir: Path) -> S: ...

    def deploy(
        self, started: S, package: Package, max_batch_delay: int, replicas: int, timeout: float
    ) -> Deployment: ...

    def ready(self, started: S, deployment: Deployment, timeout: float) -> list[Replica]: ...

    def endpoints(self, started: S) -> Endpoints: ...

    def mark(self, started: S, deployment: Deployment) -> Mark: ...

    def metrics(self, started: S, deployment: Deployment, since: Mark) -> Figures: ...

    def stop(self, started: S, grace: float | None = None) -> Stopped:
        """grace: s for an orderly exit before the escalation (None: the engine's own; 0: kill at once)."""
        ...

    # What a night needs beyond the seven: the server its run directory records (stop, after an interruption
    # or from `python -m flows.stop`), the servers crashed runs left, its processes by role (where the CPU and
    # memory went), and where the replicas landed (Neuron: a NeuronCore each; CUDA: which GPU).

    def recorded(self, server_dir: Path) -> S | None: ...

    def stop_stale(self, runs_dir: Path) -> list[str]: ...

    def leftovers(self, started: S) -> list[int]:
        """The pids of the server still running: what must be empty once stop returned."""
        ...

    def processes(self, started: S) -> dict[str, list[psutil.Process]]:
        """{"workers": the processes that run the model, "frontend": the rest of the server}."""
        ...

    def core_map(self, started: S, replicas: list[Replica]) -> CoreMap: ...

    def gpu_map(self, started: S, replicas: list[Replica]) -> GpuMap: ...
