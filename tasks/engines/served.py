"""The served model, as the stages after register see it: an engine, the server it started and what it deployed.

check and benchmark take a Served and never name its engine: the check stage reads inference_url, the token's
header and the refusal the engine answers without it (tasks/verify/checks.py); the benchmark reads the
predictions URL, the server's processes by role and the engine's own account of a window (tasks/measure/served.py
ServedModel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from serving.contract import ModelInfo
from tasks.engines.seam import Deployment, Engine, Package, Started
from tasks.measure.results import Figures, Mark


@dataclass(frozen=True)
class Served:
    engine: Engine[Any]
    started: Started
    package: Package
    deployment: Deployment

    @property
    def engine_name(self) -> str:
        return self.engine.name

    @property
    def inference_url(self) -> str:
        return self.started.inference_url

    def inference_headers(self) -> dict[str, str]:
        return self.started.inference_headers()

    @property
    def refused_with(self) -> int | None:
        return self.started.refused_with

    @property
    def model_name(self) -> str:
        return self.package.model_name

    @property
    def info(self) -> ModelInfo:
        return self.package.info

    @property
    def predictions_url(self) -> str:
        return self.started.endpoints.predictions_url(self.package.model_name)

    @property
    def server_dir(self) -> Path:
        return self.started.server_dir

    def processes(self) -> dict[str, list[psutil.Process]]:
        return self.engine.processes(self.started)

    def mark(self) -> Mark:
        return self.engine.mark(self.started, self.deployment)

    def figures(self, since: Mark) -> Figures:
        return self.engine.metrics(self.started, self.deployment, since)
