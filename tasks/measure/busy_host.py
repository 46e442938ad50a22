"""The busy-host rule: other work used more than BUSY_SHARE of the host's CPUs while a figure was measured.

Tonight's figures get a warning saying how much (the server and the in-process ceiling compete with that work), and
the regression leaves such nights out of its baseline (tasks/measure/history.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeGuard

from tasks.measure import figures
from tasks.measure.figures import CEILING_OTHER_CORES, CPU_HOST_CORES, CPU_OTHER_CORES, Figure
from tasks.measure.results import BenchmarkResult

BUSY_SHARE = 0.1  # other work using more than this share of the host's CPUs: figures unreliable


def number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def busy(found: Mapping, other: Figure = CPU_OTHER_CORES) -> bool:
    """Other work used more than BUSY_SHARE of the host's CPUs (by default during the load), in a
    run's figures: this run's (figures.values) or an earlier night's artifact (figures_of).
    Figures without CPU accounting (older nights) are not busy."""
    used, cores = found.get(other.name), found.get(CPU_HOST_CORES.name)
    return number(used) and number(cores) and used > BUSY_SHARE * cores


def busy_host_warnings(bench: BenchmarkResult) -> list[str]:
    """Other work on the host competes with the server and with the ceiling: say so, with how much."""
    found = figures.values(bench)
    cores = found.get(CPU_HOST_CORES.name)
    warnings = []
    if busy(found):
        warnings.append(
            f"the host was busy with other work during the load ({found[CPU_OTHER_CORES.name]:.2f} "
            f"of {cores} CPUs): throughput and latency are lower than this server can do"
        )
    if busy(found, CEILING_OTHER_CORES):
        warnings.append(
            f"the host was busy with other work while the ceiling was measured "
            f"({found[CEILING_OTHER_CORES.name]:.2f} of {cores} CPUs): the ceiling, and so "
            f"served / in-process, are not reliable"
        )
    return warnings
