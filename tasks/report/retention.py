"""Retention: what the nights leave on disk, bounded.

A night's directory is mostly files a reader never opens again once newer nights exist: the traced graphs
(model/), the archives TorchServe served (model_store/, a copy of the graphs) and TorchServe's logs. Its
records -- summary.json, benchmark.json, flow.log, the charts, the server's config and record -- are small and
are what a comparison months later reads. So runs_dir keeps everything of the newest `retention.full_runs` runs
and only the records of older ones; the compile cache keeps its most recently used entries within
`retention.cache_entries` and `retention.cache_gib` (tasks/prepare/cache.py bound). Applied at the end of every run
(flows/run.py) and by hand (python -m tools.prune), with the settings of RetentionConfig (tasks/common/config.py).

Never pruned: a run that may still be running (no record written and younger than a day: a run killed outright
writes none, and its files go the next day), and a run whose TorchServe was kept up on purpose (--keep-serving:
it serves from that run's model store).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.common.config import RunConfig
from tasks.prepare import cache
from tasks.serve.server import find_kept

# The heavy parts of a run directory: the night's graphs (a sweep's: model-b<batch size>), its archives, TorchServe's
# logs (a sweep's servers: server-w<workers>), and Ray's session logs where the Ray engine served the night
# (server/ray: the path issue 33's second part writes them to). Everything else in it is a record and stays.
HEAVY = ("model", "model-b*", "model_store", "server*/logs", "server*/ray")
# A run that wrote one of these has ended: the night's summary, the doctor's report, the sweep's rows.
RECORDS = ("summary.json", "doctor.json", "sweep.json")
# runs/<UTC time>-<id> (flows.validate, flows.sweep), runs/doctor-<UTC time> (flows.doctor): the time orders them.
STAMP = re.compile(r"(\d{8}-\d{6})")
UNFINISHED_S = 86_400.0  # a run with no record, younger than this, may still be running


@dataclass
class Pruned:
    """What a pruning removed, or would remove (dry_run): runs cut down to their records, cache entries evicted."""

    runs: list[Path] = field(default_factory=list)
    run_bytes: int = 0  # bytes freed in runs_dir (a file another link still holds frees nothing)
    evicted: list[cache.Entry] = field(default_factory=list)


def run_dirs(runs_dir: Path) -> list[Path]:
    """The run directories under runs_dir, newest first, by the UTC time in their names (runs/latest, hidden
    files and directories named otherwise are not runs)."""
    found = [
        path
        for path in runs_dir.iterdir()
        if path.is_dir() and not path.is_symlink() and not path.name.startswith(".") and STAMP.search(path.name)
    ]
    return sorted(found, key=lambda path: STAMP.search(path.name).group(1), reverse=True)  # type: ignore[union-attr]


def heavy_parts(run_dir: Path) -> list[Path]:
    return sorted({part for pattern in HEAVY for part in run_dir.glob(pattern) if part.is_dir()})


def _may_be_running(run_dir: Path, now: float) -> bool:
    if any((run_dir / record).is_file() for record in RECORDS):
        return False
    return now - max((p.stat().st_mtime for p in run_dir.rglob("*")), default=run_dir.stat().st_mtime) < UNFINISHED_S


def _freed(part: Path) -> int:
    """The bytes removing `part` gives back: a file whose data another hard link holds (the compile cache's copy of
    a graph) gives back none."""
    return sum(f.stat().st_size for f in part.rglob("*") if f.is_file() and f.stat().st_nlink == 1)


def prune_runs(runs_dir: Path, full_runs: int, dry_run: bool = False) -> Pruned:
    """Every run directory but the newest `full_runs` (and those never pruned: see the module) loses its heavy
    parts; returns what went."""
    pruned = Pruned()
    if not runs_dir.is_dir():
        return pruned
    kept = {server.server_dir.parent.resolve() for server in find_kept(runs_dir)}
    now = time.time()
    for run_dir in run_dirs(runs_dir)[full_runs:]:
        parts = heavy_parts(run_dir)
        if not parts or run_dir.resolve() in kept or _may_be_running(run_dir, now):
            continue
        pruned.runs.append(run_dir)
        for part in parts:
            pruned.run_bytes += _freed(part)
            if not dry_run:
                shutil.rmtree(part, ignore_errors=True)
    return pruned


def apply(config: RunConfig, dry_run: bool = False) -> Pruned:
    """runs_dir pruned and the compile cache bounded, as config.retention says."""
    settings = config.retention
    pruned = prune_runs(config.runs_dir, settings.full_runs, dry_run)
    max_bytes = int(settings.cache_gib * 2**30)
    if dry_run:
        pruned.evicted = cache.over_bound(config.build.cache_dir, settings.cache_entries, max_bytes)
    else:
        pruned.evicted = cache.bound(config.build.cache_dir, settings.cache_entries, max_bytes)
    return pruned


def size(path: Path) -> int:
    """Bytes under `path`, a file held by several links counted once (as du counts it)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for file in path.rglob("*") if path.is_dir() else []:
        if file.is_file() and not file.is_symlink():
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def describe(pruned: Pruned, config: RunConfig, dry_run: bool = False) -> list[str]:
    """What the pruning did (or would do), and what runs_dir and the cache hold after it, in two lines."""
    settings, mib = config.retention, 2**20
    verb = "would cut" if dry_run else "cut"
    evicted = sum(entry.bytes for entry in pruned.evicted)
    return [
        f"retention: {config.runs_dir}: {verb} {len(pruned.runs)} run(s) older than the newest {settings.full_runs} "
        f"to their records ({pruned.run_bytes / mib:.0f} MiB); it holds {size(config.runs_dir) / mib:.0f} MiB",
        f"retention: compile cache {config.build.cache_dir}: {'would evict' if dry_run else 'evicted'} "
        f"{len(pruned.evicted)} entr{'y' if len(pruned.evicted) == 1 else 'ies'} ({evicted / mib:.0f} MiB); "
        f"bound {settings.cache_entries} entries, {settings.cache_gib:g} GiB",
    ]
