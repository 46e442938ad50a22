"""Served / in-process on each engine, in one sitting: TorchServe and Ray Serve back to back on the same graph.

    .venv/bin/python -m tools.compare_engines [--rounds 2] [--duration 30] [--concurrency 64] [--out FILE]
        [--engines torchserve,ray] [--ray-queue N] [--ray-admit-any-time]

Needs the extra [ray] (./setup.sh --ray). The default config's model and shapes (the embedded all-MiniLM-L6-v2,
6 x 128 and its length buckets), traced once through the compile cache, are served by each engine in turn
through the engine seam (tasks/engines): start, deploy with one worker / replica per physical core and the
config's max_batch_delay, then -- as the benchmark stage does -- the ceiling (the traced model in-process, no
server, tasks/measure/ceiling.measure_beside) while the server idles, the load (closed loop, 64 clients, 2 s
warm-up, 30 s measured, the MRPC dev pairs), the engine's own figures over that window, where the CPU went,
and stop. Engines alternate ABBA... so a host that gets busier or quieter during the sitting weighs on both
alike; each round's ratio has its own ceiling, measured minutes before its load. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import cast, get_args

import psutil

from tasks.common.config import REPO_ROOT, load_config
from tasks.common.processes import live_tree
from tasks.common.sizing import resolve_serving
from tasks.engines.ray.deploy import REPLICA_QUEUE
from tasks.engines.ray.engine import RayEngine
from tasks.engines.registry import engine_named
from tasks.engines.seam import Engine, EngineName, Started
from tasks.measure import ceiling as ceiling_stage
from tasks.measure import loadgen
from tasks.measure.results import BenchmarkResult
from tasks.prepare.trace import trace
from tasks.verify.pairs import load_pool

RESULTS = REPO_ROOT / "runs" / "compare-engines"
CLIENT_AND_HOST = ("load generator (this process)", "host, all of it")


def role(process: psutil.Process) -> str:
    """Which part of a server a process is, by its command line (Ray renames its workers ray::<Actor>)."""
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "gone"
    for needle, name in (
        ("org.pytorch.serve.ModelServer", "torchserve frontend (java)"),
        ("model_service_worker", "torchserve workers"),
        ("ray::ServeReplica", "ray replicas"),
        ("ray::ProxyActor", "ray proxy"),
        ("ray::ServeController", "ray controller"),
        ("gcs_server", "ray gcs"),
        ("raylet", "ray raylet"),
    ):
        if needle in command:
            return name
    return "other server processes"


def server_processes(started: Started) -> list[psutil.Process]:
    """Every live process of the server: its recorded ones and their descendants (Ray's by marker too)."""
    from tasks.engines.ray.head import RayStarted, marked

    return live_tree(list(started.processes) + (marked(started.marker) if isinstance(started, RayStarted) else []))


def cpu_seconds(processes: list[psutil.Process]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            totals[role(process)] = totals.get(role(process), 0.0) + times.user + times.system
        except psutil.Error:
            pass
    mine, host = psutil.Process().cpu_times(), psutil.cpu_times()
    totals["load generator (this process)"] = mine.user + mine.system
    totals["host, all of it"] = sum(host) - host.idle - getattr(host, "iowait", 0.0)
    return totals


def engine_for(name: EngineName, args) -> Engine:
    if name == "ray":
        return RayEngine(replica_queue=args.ray_queue, admit_when_idle=not args.ray_admit_any_time)
    return engine_named(name)


def one_round(name: EngineName, traced, pairs, args, workdir: Path) -> dict:
    config = load_config(None, {"serving.free_ports": True})
    serving, engine = config.serving, engine_for(name, args)
    resolved = resolve_serving(serving)
    package = engine.package(traced, workdir / "model_store")
    began = time.monotonic()
    started = engine.start(serving, resolved, package, workdir / "server")
    try:
        start_s = time.monotonic() - began
        deployment = engine.deploy(started, package, serving.max_batch_delay, resolved.initial_workers, 300)
        replicas = engine.ready(started, deployment, 120)
        ceiling = ceiling_stage.measure_beside(started.server_dir, resolved, traced.model_dir, pairs, 3.0, 3)
        processes = server_processes(started)
        url, headers = started.endpoints.predictions_url(package.model_name), started.inference_headers()
        # The engine's figures and the CPU over the measured window only: read as the warm-up ends.
        at: dict = {}
        timer = threading.Timer(
            args.warmup, lambda: at.update(mark=engine.mark(started, deployment), cpu=cpu_seconds(processes))
        )
        timer.start()
        result = loadgen.load(
            url,
            headers,
            pairs,
            loadgen.Load(concurrency=args.concurrency, duration=args.duration, warmup=args.warmup),
        )
        timer.join()
        cpu_1 = cpu_seconds(processes)
        figures = engine.metrics(started, deployment, at["mark"])
    finally:
        engine.stop(started)
    bench = BenchmarkResult.from_load(result)
    cores = {key: (cpu_1[key] - at["cpu"].get(key, 0.0)) / result.seconds for key in cpu_1}
    # The server's own CPU per inference (every process of it, the load generator and other tenants left out) and
    # the in-process run's: a ratio a busy host disturbs far less than throughput, which other tenants' load moves.
    server_cores = sum(value for key, value in cores.items() if key not in CLIENT_AND_HOST)
    server_ms = server_cores * 1000 / bench.inferences_per_s if bench.inferences_per_s else None
    return {
        "engine": name,
        "replicas": [replica.model_dump() for replica in replicas],
        "start_s": start_s,
        "deploy_s": deployment.seconds,
        "ceiling_inferences_per_s": ceiling.inferences_per_s,
        "ceiling_layout": ceiling.best_layout,
        "served_inferences_per_s": bench.inferences_per_s,
        "served_over_ceiling": bench.inferences_per_s / ceiling.inferences_per_s,
        "latency_ms": bench.latency_ms.model_dump(),
        "errors": bench.errors,
        "windows_cv": bench.windows.cv if bench.windows else None,
        "cpu_cores": {key: round(value, 3) for key, value in cores.items()},
        "server_cpu_ms_per_inference": server_ms,
        "ceiling_cpu_ms_per_inference": ceiling.cpu_ms_per_inference,
        "in_process_over_served_cpu": ceiling.cpu_ms_per_inference / server_ms
        if ceiling.cpu_ms_per_inference and server_ms
        else None,
        "engine_figures": figures.model_dump(mode="json"),
        "settings": {"ray_queue": args.ray_queue, "ray_admit_any_time": args.ray_admit_any_time}
        if name == "ray"
        else {},
    }


def where_time_goes(times: dict | None) -> str:
    """Per request means (ms) of the engine's own figures, and the batch fill: one line for the console."""
    if not times:
        return "no engine figures"
    parts = [f"{times['batches']} batches of {times['mean_batch_fill'] or 0:.2f}"]
    if times.get("batch_sizes"):
        parts.append(f"sizes {times['batch_sizes']}")
    for key in ("request_ms", "queue_ms", "replica_ms", "batch_wait_ms", "handler_ms"):
        if times.get(key):
            parts.append(f"{key.removesuffix('_ms')} {times[key]['mean']:.0f}")
    return ", ".join(parts)


def _engines(text: str) -> list[EngineName]:
    """--engines: known names only -- a misspelt one is refused, never dropped."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in get_args(EngineName)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown engine {', '.join(unknown)}: one of {', '.join(get_args(EngineName))}"
        )
    return cast(list[EngineName], names)


def build_parser() -> argparse.ArgumentParser:
    """The command line (its own function: tests/commands.py parses the docs' commands with it, running nothing)."""
    parser = argparse.ArgumentParser(prog="python -m tools.compare_engines", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="ABBA... rounds: each engine this many times")
    parser.add_argument("--duration", type=float, default=30.0, help="s of measured load")
    parser.add_argument("--warmup", type=float, default=2.0, help="s of load before the measured one")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--engines",
        type=_engines,
        default="torchserve,ray",
        help="one or both, in the order the first round takes them",
    )
    parser.add_argument("--ray-queue", type=int, default=REPLICA_QUEUE, help="Serve's max_ongoing_requests")
    parser.add_argument(
        "--ray-admit-any-time",
        action="store_true",
        help="let a request join Serve's batch queue while a batch runs (@serve.batch alone)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = load_config()  # the default night
    work = args.out.with_suffix("")
    traced = trace(config, "cpu", work / "model")
    pairs, source = load_pool(None)
    names: list[EngineName] = args.engines
    order: list[EngineName] = []
    for index in range(args.rounds):  # ABBA...: each engine as often first as second
        order += names if index % 2 == 0 else names[::-1]
    rounds = []
    for index, name in enumerate(order):
        print(f"round {index + 1}/{len(order)}: {name}", flush=True)
        rounds.append(one_round(name, traced, pairs, args, work / f"{index:02d}-{name}"))
        row = rounds[-1]
        print(
            f"  {row['served_inferences_per_s']:.1f} inferences/s served, {row['ceiling_inferences_per_s']:.1f} "
            f"in-process: {row['served_over_ceiling']:.3f}; p50 {row['latency_ms']['p50']:.0f} ms, "
            f"p99 {row['latency_ms']['p99']:.0f} ms; CPU per inference {row['server_cpu_ms_per_inference'] or 0:.1f} "
            f"ms served, {row['ceiling_cpu_ms_per_inference'] or 0:.1f} in-process; "
            f"{where_time_goes(row['engine_figures']['times'])}",
            flush=True,
        )
    summary = {
        name: statistics.median(r["served_over_ceiling"] for r in rounds if r["engine"] == name) for name in names
    }
    cpu = {
        name: statistics.median(r["in_process_over_served_cpu"] or 0 for r in rounds if r["engine"] == name)
        for name in names
    }
    report = {
        "command": " ".join(sys.argv),
        "pairs": source,
        "host": {"cpus": psutil.cpu_count(), "load_average": psutil.getloadavg()},
        "rounds": rounds,
        "median_served_over_ceiling": summary,
        "ray_over_torchserve": summary["ray"] / summary["torchserve"] if len(summary) == 2 else None,
        "median_in_process_over_served_cpu": cpu,
        "cpu_ray_over_torchserve": cpu["ray"] / cpu["torchserve"] if len(cpu) == 2 and cpu["torchserve"] else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    keys = ("median_served_over_ceiling", "ray_over_torchserve", "median_in_process_over_served_cpu")
    print(json.dumps({k: report[k] for k in (*keys, "cpu_ray_over_torchserve", "host")}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
