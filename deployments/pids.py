"""The pid files of what `deployments/local.py up` starts: one a process, under <state dir>/pids/, each holding a
ProcessRef ("pid create_time boot_time", tasks/common/processes.py), so a recycled pid is never taken for ours."""

from __future__ import annotations

from pathlib import Path

from tasks.common.processes import ProcessRef


def path(state: Path, name: str) -> Path:
    return state / "pids" / f"{name}.pid"


def record(state: Path, name: str, ref: ProcessRef) -> None:
    file = path(state, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(ref.line() + "\n")


def recorded(state: Path, name: str) -> ProcessRef | None:
    """The live process a pid file names, or None (and the stale file is removed)."""
    file = path(state, name)
    try:
        ref = ProcessRef.parse(file.read_text())
    except (OSError, ValueError):
        ref = None
    if ref is not None and ref.alive() is not None:
        return ref
    file.unlink(missing_ok=True)
    return None


def names(state: Path, prefix: str) -> list[str]:
    """The recorded names starting with `prefix` ("worker-", or "" for all)."""
    folder = state / "pids"
    return sorted(p.stem for p in folder.glob(f"{prefix}*.pid")) if folder.is_dir() else []


def forget(state: Path) -> None:
    """Every pid file: `down` has stopped what they named."""
    for name in names(state, ""):
        path(state, name).unlink(missing_ok=True)
