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

import psutil

from serving.claims import core_claims, gpu_claims
from tasks.common.config import RunConfig, ServingConfig
from tasks.common.processes import Stopped, group_members, live_tree
from tasks.common.runlog import Log
from tasks.common.sizing import ResolvedServing
from tasks.engines.seam import Deployment, Endpoints, EngineError, EngineName, Package, Replica, Started
from tasks.engines.served import Served
from tasks.measure import buckets
from tasks.measure.buckets import BucketComparison
from tasks.measure.results import Figures, Mark
from tasks.measure.served import FRONTEND, WORKERS
from tasks.measure.server_metrics import LOG_SETTLE_S, model_load, server_times
from tasks.prepare.archive import Archive, archive
from tasks.serve import register as register_step
from tasks.serve import server as server_step
from tasks.serve.cores import claims_dir
from tasks.serve.placement import CoreMap, GpuMap, core_map_of, gpu_map_of, ready_worker_pids

if TYPE_CHECKING:
    from tasks.prepare.trace import TracedModel


class TorchServeStarted(Started):
    engine: Literal["torchserve"] = "torchserve"
    threads_per_worker: int


# TorchServe 0.12 refuses a request without the right token with 400 (InvalidKeyException), not 401.
REFUSED_WITH = 400


def started_from(server: server_step.Server, threads_per_worker: int) -> TorchServeStarted:
    """The seam's record of a TorchServe the stages' own code started (server.json's Server)."""
    return TorchServeStarted(
        server_dir=server.server_dir,
        endpoints=Endpoints(
            inference_url=server.inference_url,
            key_file=server.key_file if server.token_auth else None,
            refused_with=REFUSED_WITH,
        ),
        owner=server.owner,
        processes=server.processes,
        management_url=server.management_url,
        threads_per_worker=threads_per_worker,
    )


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
    label = "TorchServe"

    def package(self, traced: TracedModel, store: Path) -> Package:
        made = archive(traced, store)
        return Package(engine="torchserve", model_name=made.model_name, path=made.mar_file, info=made.info)

    def start(
        self, serving: ServingConfig, resolved: ResolvedServing, package: Package, server_dir: Path
    ) -> TorchServeStarted:
        server = server_step.start(serving, resolved, package.path.parent, server_dir)
        try:
            server_step.wait_healthy(server, serving.startup_timeout)
        except Exception:  # an interruption goes on up: the caller's exit stops it (the run's, shielded), by its record
            server_step.stop(server)
            raise
        return started_from(server, resolved.threads_per_worker)

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

    def stop(self, started: TorchServeStarted, grace: float | None = None) -> Stopped:
        server = _server(started)
        return server_step.stop(server) if grace is None else server_step.stop(server, grace=grace)

    def recorded(self, server_dir: Path) -> TorchServeStarted | None:
        """The TorchServe server.json records in server_dir (threads per worker are not recorded there: 0)."""
        server = server_step.load_record(server_dir)
        return started_from(server, 0) if server is not None else None

    def stop_stale(self, runs_dir: Path) -> list[str]:
        return server_step.stop_stale(runs_dir)

    def leftovers(self, started: TorchServeStarted) -> list[int]:
        """Its recorded processes, and its launcher's process group (a Java whose launcher died is in no record)."""
        refs = [*started.processes, *group_members(started.processes[0])] if started.processes else []
        return sorted({ref.pid for ref in refs if ref.alive()})

    def processes(self, started: TorchServeStarted) -> dict[str, list[psutil.Process]]:
        """Its workers, and the rest: the Java frontend and the launcher."""
        roles: dict[str, list[psutil.Process]] = {WORKERS: [], FRONTEND: []}
        for process in live_tree(_server(started).processes):
            roles[WORKERS if _is_worker(process) else FRONTEND].append(process)
        return roles

    def core_map(self, started: TorchServeStarted, replicas: list[Replica]) -> CoreMap:
        return core_map_of(
            [replica.pid for replica in replicas],
            claims_dir(started.server_dir),
            len(replicas),
            fix="read the workers' log (server/logs/model_log.log): each says which core it took",
        )

    def gpu_map(self, started: TorchServeStarted, replicas: list[Replica]) -> GpuMap:
        return gpu_map_of([replica.pid for replica in replicas], claims_dir(started.server_dir))


def compare_buckets(
    served: Served, traced: TracedModel, config: RunConfig, workers: int, log: Log | None = None
) -> BucketComparison:
    """The compare-buckets stage (tasks/measure/buckets.py) on the TorchServe that serves `served`."""
    started = served.started
    assert isinstance(started, TorchServeStarted)
    return buckets.compare(_server(started), _archive(served.package), traced, config, workers, log)


def _is_worker(process: psutil.Process) -> bool:
    try:
        return "model_service_worker" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _unit(pid: int, cores: dict[int, int], gpus: dict[int, int], threads: int) -> str:
    if pid in cores:
        return f"NeuronCore {cores[pid]}"
    if pid in gpus:
        return f"GPU {gpus[pid]}"
    return f"CPU ({threads} threads)"
