"""The compile cache: a traced model's files, kept across nights in a content-addressed directory.

An entry is reused only when everything that shapes the graph is equal: the checkpoint's files (their
sha256), the model kind and threshold, batch_size, max_length, the length buckets, the backend, the
compiler arguments, the parity tolerance it passed, the code that builds the graph, and the versions of
python, torch, transformers, torch-neuronx and neuronx-cc -- and, on Neuron, of what the compiler resolved beside
it that changes what it builds (COMPILER_DEPENDENCIES). The key is the sha256 of all of that.

    <cache_dir>/<key>/            model_<length>.pt, tokenizer files, model_info.json
    <cache_dir>/<key>/manifest.json   every file's sha256, and the seconds the build took

An entry is written whole or not at all (built in a temporary directory, then renamed); one whose
manifest is missing or whose files do not match it (a killed copy, a disk fault, a hand edit) is
deleted and rebuilt. `python -m tools.cache clear` empties the cache.

A run's model directory and the entry share their files (hard links, where both are on one file system; a
copy where not): a graph is on disk once however many nights restored it, and a changed file in either is a
changed file in both, which the hashes checked at every hit find. A hit marks its entry used (the directory's
mtime), so `bound` removes the least recently used entries first, keeping the cache within a number of entries
and of bytes (retention.cache_entries, retention.cache_gib: tasks/common/config.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from tasks.common.config import REPO_ROOT
from tasks.common.versions import package_versions

MANIFEST = "manifest.json"
# The code whose change changes the graph (the wrappers, the example inputs, the encoding).
GRAPH_CODE = [
    REPO_ROOT / "tasks" / "prepare" / "trace.py",
    REPO_ROOT / "tasks" / "prepare" / "compile.py",
    REPO_ROOT / "serving" / "contract.py",
]


# Packages installed beside neuronx-cc whose version changes the graph it builds, though neuronx-cc's own does not
# change: islpy, the integer-set library its scheduler and Simplifier call (neuronx-cc 2.27 admits islpy~=2026.1,
# and 2026.2 changed its API enough to break every compile, NCC_ISMP902: constraints-neuron.txt); nki, whose
# kernels it may compile in; torch-xla and libneuronxla, which lower the traced model to the HLO it reads. Not
# numpy, scipy or ml-dtypes: the compiler's helpers, with no report of them changing its output.
COMPILER_DEPENDENCIES = ("islpy", "nki", "torch-xla", "libneuronxla")


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hash(source_dir: Path | None, source: str) -> str:
    """The checkpoint's files, by content; a hub id without a local copy is keyed by its name."""
    if source_dir is None:
        return f"hub:{source}"
    digest = hashlib.sha256()
    for path in sorted(p for p in source_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(source_dir)}\0{file_hash(path)}\0".encode())
    return digest.hexdigest()


def key_of(request: dict, source_dir: Path | None) -> tuple[str, dict]:
    """(the entry's key, what went into it) for a trace request (tasks/prepare/trace.py)."""
    model = request["model"]
    parts = {
        "model_files": source_hash(source_dir, model["source"]),
        "kind": model["kind"],
        "threshold": model["threshold"],
        "batch_size": request["batch_size"],
        "max_length": request["max_length"],
        "buckets": request["buckets"],
        "backend": request["backend"],
        "parity_tolerance": request["parity_tolerance"],
        "compiler_args": request["compiler_args"] if request["backend"] == "neuron" else [],
        "code": hashlib.sha256(b"".join(p.read_bytes() for p in GRAPH_CODE)).hexdigest(),
        "versions": {
            "python": platform.python_version(),
            **package_versions("torch", "transformers", "torch-neuronx", "neuronx-cc"),
        },
    }
    if request["backend"] == "neuron":  # off Neuron nothing compiles with them: the key stays as it was
        parts["compiler_dependencies"] = package_versions(*COMPILER_DEPENDENCIES)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32], parts


def lookup(cache_dir: Path, key: str) -> tuple[dict | None, str]:
    """(the entry's manifest, "hit") when it is whole; (None, why not) otherwise -- a bad entry is deleted."""
    entry = cache_dir / key
    if not entry.is_dir():
        return None, "no entry"
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
        for name, digest in files.items():
            if file_hash(entry / name) != digest:
                raise ValueError(f"{name} does not match its manifest")
    except (OSError, ValueError, KeyError, TypeError) as error:
        shutil.rmtree(entry, ignore_errors=True)
        return None, f"corrupt entry deleted and rebuilt ({type(error).__name__}: {error})"
    os.utime(entry)  # used now: the last to go when the cache is bounded
    return manifest, "hit"


def share(source: Path, target: Path) -> None:
    """target as the same file as source (a hard link), or a copy of it where a link cannot be made (another file
    system, a file system without links)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def restore(cache_dir: Path, key: str, manifest: dict, out_dir: Path) -> None:
    """A whole entry's files into the run's model directory (shared with the entry: see `share`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        share(cache_dir / key / name, out_dir / name)


def store(cache_dir: Path, key: str, parts: dict, model_dir: Path, files: list[str], seconds: float) -> None:
    """Keep a fresh build: copied into a temporary directory beside the entry, then renamed into place,
    so a reader never sees half an entry (a killed copy leaves only a .tmp- directory, cleared next time)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in files:
        share(model_dir / name, staging / name)
    manifest = {
        "key": key,
        "parts": parts,
        "files": {name: file_hash(staging / name) for name in files},
        "build_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    try:
        os.rename(staging, cache_dir / key)
    except OSError:  # another run stored the same key first: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)


def clear(cache_dir: Path) -> int:
    """Delete every entry (and leftovers of killed writes); returns how many entries there were."""
    if not cache_dir.is_dir():
        return 0
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    for path in entries:
        shutil.rmtree(path, ignore_errors=True)
    return len([p for p in entries if not p.name.startswith(".tmp-")])


# A staging directory this old was left by a killed store (a store takes seconds): `bound` removes it.
STALE_STAGING_S = 3600.0


class Entry(NamedTuple):
    key: str
    path: Path
    bytes: int  # its files' sizes (shared with run directories or not)
    used: float  # when a run last stored or restored it (s since the epoch)


def entries(cache_dir: Path) -> list[Entry]:
    """The cache's entries, most recently used first (staging directories of stores under way are not entries)."""
    found = []
    for path in cache_dir.iterdir() if cache_dir.is_dir() else []:
        if path.is_dir() and not path.name.startswith(".tmp-"):
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            found.append(Entry(path.name, path, size, path.stat().st_mtime))
    return sorted(found, key=lambda entry: entry.used, reverse=True)


def over_bound(cache_dir: Path, max_entries: int, max_bytes: int) -> list[Entry]:
    """The entries `bound` removes: the least recently used ones, until at most `max_entries` remain holding at
    most `max_bytes` -- the most recently used one always stays, however large."""
    over: list[Entry] = []
    kept, held = 0, 0
    for entry in entries(cache_dir):
        if not over and (kept == 0 or (kept < max_entries and held + entry.bytes <= max_bytes)):
            kept, held = kept + 1, held + entry.bytes
        else:
            over.append(entry)  # and every entry used before it
    return over


def bound(cache_dir: Path, max_entries: int, max_bytes: int) -> list[Entry]:
    """Remove the entries over the bound (over_bound) and the staging directories of killed stores; returns the
    entries removed."""
    removed = over_bound(cache_dir, max_entries, max_bytes)
    for entry in removed:
        shutil.rmtree(entry.path, ignore_errors=True)
    for staging in cache_dir.glob(".tmp-*") if cache_dir.is_dir() else []:
        if time.time() - staging.stat().st_mtime > STALE_STAGING_S:
            shutil.rmtree(staging, ignore_errors=True)
    return removed
