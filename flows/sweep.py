"""A benchmark sweep: batch_size x workers x max_batch_delay x concurrency, one result row each.

    python -m flows.sweep --batch-sizes 2,6 --workers 1,2 --delays 10,50 --concurrency 8,64 \
        --p90-limit-ms 2000 [--duration 10] [--warmup 3] [--config FILE] [--free-ports]

Reuses the validation flow's tasks: each batch size is traced and archived once; each worker
count gets its own TorchServe (threads per worker follow the worker count); each setting is
registered anew. Per (batch size, workers), the in-process ceiling is measured while that
TorchServe is idle. The best configuration -- most inferences/s with p90 within the limit and
no errors -- is marked. Writes sweep.json and sweep.png in the run directory and a "sweep-<deployment>"
table artifact; TorchServe is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger  # noqa: E402

from flows.stages import (  # noqa: E402
    archive_task,
    ensure_free_task,
    ping_task,
    register_task,
    start_task,
    stop_stale_task,
    stop_task,
    trace_task,
)
from tasks.measure import benchmark as benchmark_stage  # noqa: E402
from tasks.measure import cpu, server_metrics  # noqa: E402
from tasks.measure import ceiling as ceiling_stage  # noqa: E402
from tasks.measure import loadgen as loadgen  # noqa: E402
from tasks.measure.results import BenchmarkResult  # noqa: E402
from tasks.common.config import ConfigError, load_config, resolve_serving  # noqa: E402
from tasks.common import keys  # noqa: E402
from tasks.report.summary import new_run_dir  # noqa: E402
from tasks.serve.register import unregister  # noqa: E402

SWEEP_FILE = "sweep.json"
CHART_FILE = "sweep.png"


def best_under_limit(rows: list[dict], p90_limit_ms: float | None) -> dict | None:
    """Mark each row within_limit (no errors, p90 within the limit) and the best of those (most
    inferences/s); return the best, or None when no row qualifies."""
    for row in rows:
        row["within_limit"] = (row["errors"] == 0 and row["inferences_per_s"] > 0
                               and (p90_limit_ms is None or row["p90_ms"] <= p90_limit_ms))
        row["best"] = False
    eligible = [row for row in rows if row["within_limit"]]
    if not eligible:
        return None
    best = max(eligible, key=lambda row: (row["inferences_per_s"], -row["p90_ms"]))
    best["best"] = True
    return best


def _row(bench: BenchmarkResult, batch_size: int, workers: int, threads: int, delay: int,
         ceiling: ceiling_stage.Ceiling | None) -> dict:
    lat, server = bench.latency_ms, bench.server
    return {
        "label": f"b{batch_size} w{workers} d{delay} c{bench.concurrency}",
        "batch_size": batch_size, "workers": workers, "threads_per_worker": threads, "max_batch_delay": delay,
        "concurrency": bench.concurrency,
        "requests_per_s": round(bench.requests_per_s, 2), "inferences_per_s": round(bench.inferences_per_s, 2),
        "p50_ms": round(lat.p50, 1), "p90_ms": round(lat.p90, 1), "p99_ms": round(lat.p99, 1),
        "max_ms": round(lat.max, 1), "mean_ms": round(lat.mean, 1),
        "errors": bench.errors, "error_rate": round(bench.error_rate, 4),
        "ceiling_inferences_per_s": round(ceiling.inferences_per_s, 2) if ceiling else None,
        "served_over_ceiling": round(bench.inferences_per_s / ceiling.inferences_per_s, 3) if ceiling else None,
        "lone_batch_ms": round(ceiling.lone_batch_latency_ms, 1) if ceiling else None,
        "worker_lone_batch_ms": round(ceiling.worker_lone_batch_latency_ms, 1) if ceiling else None,
        "queue_ms_p50": round(server.queue_ms.p50, 1) if server and server.queue_ms else None,
        "handler_ms_p50": round(server.handler_ms.p50, 1) if server and server.handler_ms else None,
        "mean_batch_fill": round(server.mean_batch_fill, 2) if server and server.mean_batch_fill else None,
        # CPU other work on the host used meanwhile (> 0.1 x CPUs: the row is not reliable)
        "other_cores": round(bench.cpu.other_cores, 2) if bench.cpu else None,
        "other_cores_ceiling": round(ceiling.other_cores, 2) if ceiling and ceiling.other_cores is not None else None,
    }


@flow(name="bert-serving-sweep", log_prints=True)
def sweep(config_file: str = "configs/default.yaml", overrides: dict[str, Any] | None = None,
          batch_sizes: list[int] | None = None, workers: list[int] | None = None, delays: list[int] | None = None,
          concurrency: list[int] | None = None, p90_limit_ms: float | None = None) -> dict:
    """Benchmark every combination; mark the best one within the p90 limit."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    log = get_run_logger()
    config = load_config(config_file, overrides)
    serving, settings = config.serving, config.benchmark
    batch_sizes = batch_sizes or [serving.batch_size]
    delays = delays or [serving.max_batch_delay]
    concurrency = concurrency or [settings.concurrency]
    workers = workers or [resolve_serving(serving).initial_workers]
    # Each worker count resolved up front: a count this host cannot run is refused before anything starts.
    resolved_by_workers = {w: resolve_serving(serving.model_copy(update={"initial_workers": w})) for w in workers}
    run_dir = new_run_dir(config.runs_dir)
    pairs, pool = benchmark_stage.load_pool(settings.pairs_file)
    log.info("sweep in %s: batch sizes %s x workers %s x delays %s ms x concurrency %s (%d rows), %s",
             run_dir, batch_sizes, workers, delays, concurrency,
             len(batch_sizes) * len(workers) * len(delays) * len(concurrency), pool)

    with loadgen.TrivialEndpoint() as endpoint:
        client = loadgen.load(endpoint.url, {}, pairs, concurrency=max(concurrency), duration=2, warmup=0.5,
                              progress_every=None)
    log.info("load generator alone (trivial local endpoint, %d clients): %.0f requests/s",
             max(concurrency), client.requests_per_s)

    # Before trace: on Neuron a crashed night's workers still hold the cores the compile child needs.
    for line in stop_stale_task(config.runs_dir):
        log.warning(line)
    if resolved_by_workers[workers[0]].backend == "neuron":  # released a moment after the workers exit
        ensure_free_task(max(workers))
    rows: list[dict] = []
    archives = {}
    compile_cache: dict[int, dict] = {}  # batch size -> the cache's verdict (sweep.json)
    for batch_size in batch_sizes:
        any_resolved = resolved_by_workers[workers[0]]
        traced = trace_task(config.model, batch_size, serving.max_length, serving.buckets(),
                            run_dir / f"model-b{batch_size}", any_resolved.backend,
                            config.checks.parity_tolerance_for(any_resolved.backend, config.model.compiler_args),
                            # the pipeline's compile cache: on Neuron a batch size compiled before is not compiled again
                            config.build.cache_dir if config.build.compile_cache else None)
        compile_cache[batch_size] = traced.cache  # trace logs the verdict, naming the batch size
        archives[batch_size] = (traced, archive_task(traced, run_dir / "model_store"))
    for count in workers:
        resolved = resolved_by_workers[count]
        server = None
        try:
            server = start_task(serving, resolved, run_dir / "model_store", run_dir / f"server-w{count}")
            ping_task(server, serving.startup_timeout)
            for batch_size in batch_sizes:
                traced, mar = archives[batch_size]
                ceiling = None
                for delay in delays:
                    register_task(server, mar, delay, count)
                    if ceiling is None and settings.ceiling_seconds > 0:
                        try:  # workers registered and idle: measure now
                            ceiling = ceiling_stage.measure_beside(server.server_dir, resolved, traced.model_dir,
                                                                   pairs, settings.ceiling_seconds)
                        except ceiling_stage.CeilingUnavailable as error:
                            log.warning("ceiling unavailable: %s", error)
                    url = f"{server.inference_url}/predictions/{mar.model_name}"
                    for clients in concurrency:
                        wall_0 = time.time()
                        cpu_0 = cpu.cpu_snapshot(server)
                        result = loadgen.load(url, server.inference_headers(), pairs, concurrency=clients,
                                              duration=settings.duration, warmup=settings.warmup,
                                              progress_every=None)
                        bench = BenchmarkResult.from_load(result)
                        bench.cpu = cpu.cpu_use(cpu_0, cpu.cpu_snapshot(server), len(result.samples), ceiling)
                        time.sleep(server_metrics.LOG_SETTLE_S)
                        since = wall_0 + settings.warmup
                        bench.server = server_metrics.server_times(
                            Path(server.server_dir) / "logs", since,
                            since + result.seconds + server_metrics.LOG_SETTLE_S, mar.model_name)
                        row = _row(bench, batch_size, count, resolved.threads_per_worker, delay, ceiling)
                        rows.append(row)
                        log.info("%s: %.1f inferences/s, p50 %.0f ms, p90 %.0f ms, errors %d%s", row["label"],
                                 row["inferences_per_s"], row["p50_ms"], row["p90_ms"], row["errors"],
                                 f", served / in-process {row['served_over_ceiling']:.2f}"
                                 if row["served_over_ceiling"] is not None else "")
                # Its workers' processes exit before the next batch size's model loads: on Neuron each holds
                # its NeuronCore until then.
                unregister(server, mar.model_name)
        finally:
            if server is not None:
                stop_task(server)

    best = best_under_limit(rows, p90_limit_ms)
    verdict = (f"best within p90 <= {p90_limit_ms:g} ms: {best['label']} ({best['inferences_per_s']:.1f} "
               f"inferences/s, p90 {best['p90_ms']:.0f} ms)" if best and p90_limit_ms is not None else
               f"best: {best['label']} ({best['inferences_per_s']:.1f} inferences/s, p90 {best['p90_ms']:.0f} ms)"
               if best else "no configuration met the limit without errors")
    log.info(verdict)
    result = {"run_dir": str(run_dir), "pairs": pool, "p90_limit_ms": p90_limit_ms, "best": best,
              "client_requests_per_s": client.requests_per_s, "compile_cache": compile_cache, "rows": rows}
    (run_dir / SWEEP_FILE).write_text(json.dumps(result, indent=2, default=str))
    try:
        from tasks.measure.charts import sweep_chart

        result["chart"] = str(sweep_chart(rows, run_dir / CHART_FILE, p90_limit_ms))
    except ImportError as error:
        log.warning("no chart: %s (install matplotlib)", error)
    # Keyed like the pipeline's artifacts: a gpu sweep does not replace the cpu one's latest.
    suffix = keys.current_suffix(resolved_by_workers[workers[0]].backend)
    create_table_artifact(key=keys.key(keys.SWEEP, suffix), table=rows, description=verdict)
    create_markdown_artifact(key=keys.key(keys.SWEEP_SUMMARY, suffix), markdown=f"# Benchmark sweep\n\n{verdict}\n\nRun directory: "
                             f"`{run_dir}`; load generator alone: {client.requests_per_s:.0f} requests/s",
                             description="Benchmark sweep")
    return result


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from flows.cli import add_config_file_option, add_config_options

    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_file_option(parser)
    grid = parser.add_argument_group("grid (comma-separated lists; each defaults to the config's value)")
    grid.add_argument("--batch-sizes", type=_ints, metavar="N,N", help="e.g. 2,6")
    grid.add_argument("--workers", type=_ints, metavar="N,N", help="e.g. 1,2 (default: the config's, auto resolved)")
    grid.add_argument("--delays", type=_ints, metavar="MS,MS", help="max_batch_delay values in ms, e.g. 10,50")
    grid.add_argument("--concurrency", type=_ints, metavar="N,N", help="closed-loop clients, e.g. 1,8,64")
    parser.add_argument("--p90-limit-ms", type=float, metavar="MS",
                        help="mark the best configuration with p90 within this")
    add_config_options(parser, only=["max-length", "duration", "warmup", "free-ports", "runs-dir"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from flows.cli import config_overrides

    args = parse_args(argv)
    overrides = config_overrides(args)
    try:
        config = load_config(args.config, overrides)
        for count in args.workers or []:
            resolve_serving(config.serving.model_copy(update={"initial_workers": count}))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = sweep(config_file=args.config, overrides=overrides, batch_sizes=args.batch_sizes, workers=args.workers,
                  delays=args.delays, concurrency=args.concurrency, p90_limit_ms=args.p90_limit_ms,
                  return_state=True)
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"error: {result}", file=sys.stderr)
        return 1
    print(f"{'configuration':<22} {'inf/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'errors':>6} {'/ceiling':>8} "
          f"{'lone batch ms':>13} {'busy':>5}")
    for row in result["rows"]:
        ratio = f"{row['served_over_ceiling']:.2f}" if row["served_over_ceiling"] is not None else "-"
        lone = f"{row['lone_batch_ms']:.0f}" if row["lone_batch_ms"] is not None else "-"
        busy = max(row["other_cores"] or 0, row["other_cores_ceiling"] or 0)
        mark = "  <- best" if row["best"] else ""
        print(f"{row['label']:<22} {row['inferences_per_s']:>7.1f} {row['p50_ms']:>8.0f} {row['p90_ms']:>8.0f} "
              f"{row['errors']:>6} {ratio:>8} {lone:>13} {busy:>5.2f}{mark}")
    print("busy: CPUs other work on the host used during the row or its ceiling; above 0.1 x CPUs, rerun it")
    print(f"sweep: {Path(result['run_dir']) / SWEEP_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
