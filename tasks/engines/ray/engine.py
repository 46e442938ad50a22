"""Ray Serve behind the engine seam (tasks/engines/seam.py): each step in a module of its own.

package    package.py    the graphs, the tokenizer files and serving/ (the deployment) in a directory
start      head.py       a Ray instance of the run's own: loopback, dashboard and job API off, token auth on
deploy     deploy.py     one Serve deployment, replicas as TorchServe's workers, @serve.batch
ready      deploy.py     every replica has run its graph; the route answers with the token
endpoints  head.py       Serve's HTTP proxy at /predictions/<model name>, the inference token's file
metrics    metrics.py    Serve's Prometheus figures over the window, the replicas' load times
stop       head.py       Serve, then Ray, by the run's recorded processes and marker; nothing left
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tasks.common.config import ServingConfig
from tasks.common.processes import Stopped
from tasks.common.sizing import ResolvedServing
from tasks.engines.ray import deploy as deploy_step
from tasks.engines.ray import head, metrics
from tasks.engines.ray import package as package_step
from tasks.engines.ray.head import RayStarted
from tasks.engines.seam import Deployment, Endpoints, EngineName, Package, Replica
from tasks.measure.results import Figures, Mark
from tasks.serve.placement import CoreMap, GpuMap, gpu_map_from

if TYPE_CHECKING:
    from tasks.prepare.trace import TracedModel


class RayEngine:
    """The seam's Engine for Ray Serve 2.60 (the extra [ray]: ./setup.sh --ray)."""

    name: EngineName = "ray"
    label = "Ray Serve"

    def __init__(self, replica_queue: int = deploy_step.REPLICA_QUEUE, admit_when_idle: bool = True) -> None:
        """The defaults are the night's; the others exist to measure what the defaults buy (tools/compare_engines)."""
        self.replica_queue, self.admit_when_idle = replica_queue, admit_when_idle

    def package(self, traced: TracedModel, store: Path) -> Package:
        return package_step.package(traced, store)

    def start(
        self, serving: ServingConfig, resolved: ResolvedServing, package: Package, server_dir: Path
    ) -> RayStarted:
        """Ray and Serve's proxy up. A start that fails half way stops what it started before it raises; one that is
        interrupted leaves that to its caller's exit, with the instance recorded (ray.json)."""
        started = head.start(serving, resolved, server_dir, package.info.batch_size)
        try:
            head.wait_up(started, serving.startup_timeout)
        except Exception:  # an interruption goes on up: the caller's exit stops it (the run's, shielded), by its record
            head.stop(started)
            raise
        return started

    def deploy(
        self, started: RayStarted, package: Package, max_batch_delay: int, replicas: int, timeout: float
    ) -> Deployment:
        return deploy_step.deploy(
            started, package, max_batch_delay, replicas, timeout, self.replica_queue, self.admit_when_idle
        )

    def ready(self, started: RayStarted, deployment: Deployment, timeout: float) -> list[Replica]:
        return deploy_step.ready(started, deployment, timeout)

    def endpoints(self, started: RayStarted) -> Endpoints:
        return started.endpoints

    def mark(self, started: RayStarted, deployment: Deployment) -> Mark:
        now = metrics.scrape(started, deployment.model_name)
        return Mark(at=now.at, counters=now.model_dump())

    def metrics(self, started: RayStarted, deployment: Deployment, since: Mark) -> Figures:
        times = metrics.window(started, deployment.model_name, metrics.Scrape.model_validate(since.counters))
        load = metrics.model_load(deploy_step.live_replicas(started), deployment.seconds)
        return Figures(times=times, model_load=load)

    def stop(self, started: RayStarted, grace: float | None = None) -> Stopped:
        return head.stop(started) if grace is None else head.stop(started, grace=grace)

    def recorded(self, server_dir: Path) -> RayStarted | None:
        return head.load_record(server_dir)

    def stop_stale(self, runs_dir: Path) -> list[str]:
        return head.stop_stale(runs_dir)

    def leftovers(self, started: RayStarted) -> list[int]:
        return head.leftovers(started)

    def processes(self, started: RayStarted) -> dict[str, list[psutil.Process]]:
        return head.processes(started)

    def core_map(self, started: RayStarted, replicas: list[Replica]) -> CoreMap:
        """Neuron only: each replica on a NeuronCore of its own (the night's core map)."""
        return deploy_step.core_map(started, replicas)

    def gpu_map(self, started: RayStarted, replicas: list[Replica]) -> GpuMap:
        """CUDA: the GPU(s) Ray gave each replica, as the replica recorded them ("GPU 0")."""
        return gpu_map_from(
            {r.pid: int(r.unit.split()[1].split(",")[0]) for r in replicas if r.unit.startswith("GPU ") and r.unit[4:]}
        )
