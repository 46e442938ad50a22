"""TorchServe behind the engine seam (tasks/engines/seam.py), wrapping the stages' own functions unmoved:

    package    tasks/prepare/archive.archive          the .mar (torch-model-archiver) in the run's model store
    start      tasks/serve/server.start, wait_healthy  TorchServe on loopback, token authorization on
    deploy     tasks/serve/register.register          the management API: batch_size, max_batch_delay, workers
    ready      register's own wait (every worker READY), read back with each worker's unit
    endpoints  the inference API, key_file.json's inference key
    metrics    tasks/measure/server_metrics            TorchServe's metric logs over the window, its load log
    stop       tasks/serve/server.stop                 frontend first, then the tree; nothing left

The TorchServe record stays server.json in the server directory: each call reads it back, so what the seam
holds (TorchServeStarted) is only where it is and how it answers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from serving.claims import core_claims, gpu_claims
from tasks.common.config import ServingConfig
from tasks.common.processes import Stopped
from tasks.common.sizing import ResolvedServing
from tasks.engines.seam import Deployment, Endpoints, EngineError, EngineName, Figures, Mark, Package, Replica, Started
from tasks.measure.server_metrics import LOG_SETTLE_S, model_load, server_times
from tasks.prepare.archive import Archive, archive
from tasks.serve import register as register_step
from tasks.serve import server as server_step
from tasks.serve.cores import claims_dir
from tasks.serve.placement import ready_worker_pids

if TYPE_CHECKING:
    from tasks.prepare.trace import TracedModel


class TorchServeStarted(Started):
    engine: Literal["torchserve"] = "torchserve"
    threads_per_worker: int


def _server(started: TorchServeStarted) -> server_step.Server:
    server = server_step.load_record(started.server_dir)
    if server is None:
        raise EngineError(f"no TorchServe recorded in {started.server_dir}", fix="start it first")
    return server


def _archive(package: Package) -> Archive:
    return Archive(
        model_name=package.model_name, mar_file=package.path, model_store=package.path.parent, info=package.info
    )


class TorchServeEngine:
    """The seam's Engine for TorchServe 0.12 (the default install)."""

    name: EngineName = "torchserve"

    def package(self, traced: TracedModel, store: Path) -> Package:
        made = archive(traced, store)
        return Package(engine="torchserve", model_name=made.model_name, path=made.mar_file, info=made.info)

    def start(
        self, serving: ServingConfig, resolved: ResolvedServing, package: Package, server_dir: Path
    ) -> TorchServeStarted:
        server = server_step.start(serving, resolved, package.path.parent, server_dir)
        try:
            server_step.wait_healthy(server, serving.startup_timeout)
        except BaseException:
            server_step.stop(server)
            raise
        return TorchServeStarted(
            server_dir=server.server_dir,
            endpoints=Endpoints(
                inference_url=server.inference_url, key_file=server.key_file if server.token_auth else None
            ),
            owner=server.owner,
            processes=server.processes,
            threads_per_worker=resolved.threads_per_worker,
        )

    def deploy(
        self, started: TorchServeStarted, package: Package, max_batch_delay: int, replicas: int, timeout: float
    ) -> Deployment:
        began = time.monotonic()
        done = register_step.register(_server(started), _archive(package), max_batch_delay, replicas, timeout)
        return Deployment(
            model_name=done.model_name,
            batch_size=done.batch_size,
            max_batch_delay=done.max_batch_delay,
            replicas=done.workers,
            action=done.action,
            seconds=time.monotonic() - began,
        )

    def ready(self, started: TorchServeStarted, deployment: Deployment, timeout: float) -> list[Replica]:
        """register waited for every worker READY; here they are read back, each with its NeuronCore or GPU."""
        server = _server(started)
        with server.management(timeout) as client:
            register_step.wait_workers_ready(client, deployment.model_name, deployment.replicas, timeout)
        claims = claims_dir(started.server_dir)
        cores = {pid: core for core, pid in core_claims(claims).items()}
        gpus = gpu_claims(claims)
        return [
            Replica(pid=pid, unit=_unit(pid, cores, gpus, started.threads_per_worker))
            for pid in ready_worker_pids(server, deployment.model_name)
        ]

    def endpoints(self, started: TorchServeStarted) -> Endpoints:
        return started.endpoints

    def mark(self, started: TorchServeStarted, deployment: Deployment) -> Mark:
        return Mark(at=time.time())  # TorchServe's metric lines carry their own time

    def metrics(self, started: TorchServeStarted, deployment: Deployment, since: Mark) -> Figures:
        time.sleep(LOG_SETTLE_S)
        logs = _server(started).logs_dir
        return Figures(
            times=server_times(logs, since.at, time.time(), deployment.model_name),
            model_load=model_load(logs, deployment.model_name),
        )

    def stop(self, started: TorchServeStarted) -> Stopped:
        return server_step.stop(_server(started))


def _unit(pid: int, cores: dict[int, int], gpus: dict[int, int], threads: int) -> str:
    if pid in cores:
        return f"NeuronCore {cores[pid]}"
    if pid in gpus:
        return f"GPU {gpus[pid]}"
    return f"CPU ({threads} threads)"
