"""What the benchmark measures: the served model, whichever engine serves it.

The benchmark speaks HTTP to the model (predictions_url, the token's header) and asks the server for three things
it cannot see from outside: its processes by role (where the CPU and the memory went), its directory (on Neuron
the ceiling's child takes a core no replica holds), and the engine's own account of a window -- a mark as the
measured load begins, the figures at its end. tasks/engines/served.py's Served is this for a night's engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import psutil

from tasks.measure.results import Figures, Mark

WORKERS, FRONTEND = "workers", "frontend"  # the roles: what runs the model, and the rest of the server


class ServedModel(Protocol):
    @property
    def engine_name(self) -> str: ...

    @property
    def predictions_url(self) -> str: ...

    def inference_headers(self) -> dict[str, str]: ...

    @property
    def server_dir(self) -> Path: ...

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The server's live processes by role: {WORKERS: [...], FRONTEND: [...]}."""
        ...

    def mark(self) -> Mark: ...

    def figures(self, since: Mark) -> Figures: ...
