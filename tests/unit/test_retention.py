"""Retention: thirty default nights in a row leave runs/ and the compile cache under the documented bound, pruned by
the code a night runs at its end (tasks/report/retention.apply, as flows/run.py calls it); a run that may still be
running, and a kept server's run, are never pruned; the cache goes least recently used first.

The nights are synthetic but their sizes are a real default night's (docs/operations.md, "Disk": measured with
`du` on a night of `python -m flows.validate`): four graphs, the .mar that holds them again, TorchServe's logs. Their
big files are sparse -- the size a real night's files have, without the disk -- and retention counts sizes, not
blocks. The graphs are restored from the compile cache as trace restores them (tasks/prepare/cache.py)."""

import json
import os
import time
from pathlib import Path

import pytest

from tasks.common.config import RunConfig
from tasks.prepare import cache
from tasks.report import retention

MIB = 2**20


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch):
    """The cache checks every file's sha256 at each store and hit: 30 nights of real-sized graphs would hash ~10 GB
    of zeros. What is proven here is what is kept, not the hashing (tests/unit/test_cache.py proves that)."""
    monkeypatch.setattr(cache, "file_hash", lambda path: str(path.stat().st_size))


# A default night, measured (docs/operations.md "Disk", 2026-12-05): each graph of the four buckets (model/: 348 MiB),
# the .mar packing them (348 MiB), TorchServe's logs (54 MiB: the night at full speed; 11-14 MiB on a busy
# host), and the records -- summary.json, benchmark.json, flow.log, charts (0.2 MiB measured; 1 MiB here).
GRAPH = 87 * MIB
MAR = 4 * GRAPH
SERVER_LOGS = 54 * MIB
RECORDS = 1 * MIB
HEAVY = MAR + SERVER_LOGS  # what a night adds to runs/ beyond its records while the cache holds its graphs


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)


def _night(runs_dir: Path, cache_dir: Path, stamp: str, code: int) -> Path:
    """One default night's directory: its graphs restored from the cache entry of this code (a miss builds one),
    its .mar, TorchServe's logs, its records."""
    run_dir = runs_dir / f"{stamp}-{code:06x}"
    model = run_dir / "model"
    key = f"{code:032x}"
    files = [f"model_{length}.pt" for length in (40, 56, 80, 128)]
    manifest, _ = cache.lookup(cache_dir, key)
    if manifest is None:
        for name in files:
            _sparse(model / name, GRAPH)
        cache.store(cache_dir, key, {}, model, files, seconds=30.0)
    else:
        cache.restore(cache_dir, key, manifest, model)
    _sparse(run_dir / "model_store" / "bert-max_length128-batch_size6.mar", MAR)
    _sparse(run_dir / "server" / "logs" / "model_log.log", SERVER_LOGS)
    (run_dir / "server" / "server.json").write_text("{}")
    (run_dir / "summary.json").write_text(json.dumps({"status": "ok"}))
    _sparse(run_dir / "benchmark.json", RECORDS)
    return run_dir


def _config(tmp_path: Path) -> RunConfig:
    return RunConfig.model_validate(
        {"runs_dir": str(tmp_path / "runs"), "build": {"cache_dir": str(tmp_path / "cache")}}
    )


def test_thirty_default_nights_leave_runs_and_the_cache_under_the_documented_bound(tmp_path):
    config = _config(tmp_path)
    settings = config.retention
    runs_dir, cache_dir = config.runs_dir, config.build.cache_dir
    runs_dir.mkdir()
    for night in range(30):
        # The code changes every third night: a new cache entry (its key hashes the graph-building code).
        run_dir = _night(runs_dir, cache_dir, f"202612{night // 10 + 1:02d}-02{night % 10:02d}00", code=night // 3)
        retention.apply(config)  # what the night does at its end
        assert (run_dir / "model_store").is_dir()  # tonight's own run keeps everything
    # The bound docs/operations.md states: the newest full_runs nights whole, every night's records, the cache's.
    bound_runs = settings.full_runs * (HEAVY + 4 * GRAPH + RECORDS) + 30 * (RECORDS + 64 * 1024)
    assert retention.size(runs_dir) <= bound_runs
    assert retention.size(cache_dir) <= settings.cache_gib * 2**30
    assert len(cache.entries(cache_dir)) <= settings.cache_entries
    # Without retention the same thirty nights would hold 30 x (graphs + .mar + logs + records): ~22 GiB.
    assert 30 * (HEAVY + 4 * GRAPH + RECORDS) > 5 * bound_runs
    nights = retention.run_dirs(runs_dir)
    assert len(nights) == 30
    assert [bool(retention.heavy_parts(d)) for d in nights] == [True] * settings.full_runs + [False] * 25
    assert all((d / "summary.json").is_file() and (d / "benchmark.json").is_file() for d in nights)


def test_a_run_still_running_a_kept_servers_run_and_runs_dir_oddities_are_left(tmp_path, monkeypatch):
    config = _config(tmp_path)
    runs_dir, cache_dir = config.runs_dir, config.build.cache_dir
    runs_dir.mkdir()
    running = _night(runs_dir, cache_dir, "20261201-020000", code=1)
    (running / "summary.json").unlink()  # no record yet, and fresh: it may be running (another --free-ports run)
    crashed = _night(runs_dir, cache_dir, "20261202-020000", code=1)
    (crashed / "summary.json").unlink()
    old = time.time() - 2 * 86_400
    for path in [crashed, *crashed.rglob("*")]:
        os.utime(path, (old, old))  # killed outright two days ago: it never wrote a record
    kept = _night(runs_dir, cache_dir, "20261203-020000", code=1)
    monkeypatch.setattr(retention, "find_kept", lambda runs: [type("S", (), {"server_dir": kept / "server"})()])
    (runs_dir / "my-notes").mkdir()  # not a run: no time in its name
    for stamp in ("20261204-020000", "20261205-020000"):
        _night(runs_dir, cache_dir, stamp, code=1)
    (runs_dir / "latest").symlink_to("20261205-020000-000001")
    pruned = retention.prune_runs(runs_dir, full_runs=2)
    assert pruned.runs == [crashed]
    assert retention.heavy_parts(running) and retention.heavy_parts(kept) and not retention.heavy_parts(crashed)
    assert (runs_dir / "my-notes").is_dir()


def test_a_dry_run_removes_nothing_and_says_what_would_go(tmp_path, capsys, monkeypatch):
    from tools import prune

    config = _config(tmp_path)
    config.runs_dir.mkdir()
    for night in range(3):
        _night(config.runs_dir, config.build.cache_dir, f"2026120{night + 1}-020000", code=night)
    before = retention.size(config.runs_dir)
    args = ["--runs-dir", str(config.runs_dir), "--full-runs", "1", "--dry-run"]
    monkeypatch.setenv("BERT_COMPILE_CACHE", str(config.build.cache_dir))
    assert prune.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("would cut to its records:") == 2 and retention.size(config.runs_dir) == before
    assert prune.main(args[:-1]) == 0
    assert retention.size(config.runs_dir) < before and "cut 2 run(s)" in capsys.readouterr().out


def test_the_cache_evicts_the_least_recently_used_entry_first_and_keeps_the_newest_however_large(tmp_path):
    cache_dir = tmp_path / "cache"
    for index, key in enumerate(("a" * 32, "b" * 32, "c" * 32)):
        model = tmp_path / f"run{index}" / "model"
        _sparse(model / "model_128.pt", GRAPH)
        cache.store(cache_dir, key, {}, model, ["model_128.pt"], seconds=1.0)
        os.utime(cache_dir / key, (1_000 + index, 1_000 + index))
    manifest, verdict = cache.lookup(cache_dir, "a" * 32)  # a hit: "a" is now the most recently used
    assert verdict == "hit"
    assert [entry.key[0] for entry in cache.over_bound(cache_dir, max_entries=2, max_bytes=10 * GRAPH)] == ["b"]
    assert [entry.key[0] for entry in cache.bound(cache_dir, max_entries=5, max_bytes=GRAPH)] == ["c", "b"]
    assert [entry.key[0] for entry in cache.entries(cache_dir)] == ["a"]
    assert cache.bound(cache_dir, max_entries=1, max_bytes=1) == []  # the newest stays, however large


@pytest.mark.parametrize("shared", [True, False])
def test_a_restored_graph_is_the_cache_entrys_file_where_the_file_system_allows(tmp_path, monkeypatch, shared):
    """One graph on disk however many nights restored it; a copy where a link cannot be made."""
    cache_dir = tmp_path / "cache"
    built = tmp_path / "night1" / "model"
    _sparse(built / "model_128.pt", GRAPH)
    cache.store(cache_dir, "k" * 32, {}, built, ["model_128.pt"], seconds=1.0)
    if not shared:
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    manifest, _ = cache.lookup(cache_dir, "k" * 32)
    cache.restore(cache_dir, "k" * 32, manifest, tmp_path / "night2" / "model")
    restored = (tmp_path / "night2" / "model" / "model_128.pt").stat()
    assert (restored.st_ino == (cache_dir / ("k" * 32) / "model_128.pt").stat().st_ino) is shared
    assert restored.st_size == GRAPH
