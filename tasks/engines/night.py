"""One engine's part of a night: where its server lives, what it started and served, and what the stages found.

A night serves one engine, or several one after the other (serving.engines) on the same graph; flows/run.py keeps
an EngineNight per engine, in order, and the summary reads them (tasks/report/run_summary.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.common.config import EngineName, RunConfig
from tasks.common.processes import Stopped
from tasks.engines.registry import engine_named
from tasks.engines.seam import Deployment, Engine, Package, Replica, Started
from tasks.engines.served import Served
from tasks.measure.buckets import BucketComparison
from tasks.measure.results import BenchmarkResult
from tasks.serve.placement import CoreMap, GpuMap
from tasks.verify.checks import CheckResult

SERVER_DIR = "server"  # in the run directory: the reference engine's server; server-<engine>/ for another


@dataclass
class EngineNight:
    name: EngineName
    engine: Engine[Any]
    server_dir: Path
    config: RunConfig  # the night's configuration with serving.engine this engine: what its benchmark is of
    package: Package | None = None
    started: Started | None = None
    deployment: Deployment | None = None
    replicas: list[Replica] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    benchmark: BenchmarkResult | None = None
    buckets: BucketComparison | None = None
    core_map: CoreMap | None = None  # neuron: which worker / replica holds which NeuronCore
    gpu_map: GpuMap | None = None  # cuda: which GPU each worker / replica was given
    stopped: Stopped | None = None  # what its stop did, once it stopped

    @classmethod
    def of(cls, config: RunConfig, run_dir: Path) -> list[EngineNight]:
        """Tonight's engines, in the order they serve."""
        serving = config.serving
        return [
            cls(
                name=name,
                engine=engine_named(name),
                server_dir=run_dir / serving.engine_file(SERVER_DIR, name),
                config=config.model_copy(update={"serving": serving.model_copy(update={"engine": name})}),
            )
            for name in serving.night_engines()
        ]

    @property
    def label(self) -> str:
        return self.engine.label

    def served(self) -> Served:
        """The model as check and benchmark see it, once registered."""
        assert self.started is not None and self.package is not None and self.deployment is not None
        return Served(self.engine, self.started, self.package, self.deployment)

    def recorded(self) -> Started | None:
        """Its server: as start returned it, else as its directory records it (start may not have returned)."""
        return self.started or self.engine.recorded(self.server_dir)
