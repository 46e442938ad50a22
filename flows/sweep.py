"""A benchmark sweep: batch_size x workers x max_batch_delay x concurrency, one result row each.

    python -m flows.sweep --batch-sizes 2,6 --workers 1,2 --delays 10,50 --concurrency 8,64 \
        --p90-limit-ms 2000 [--duration 10] [--warmup 3] [--config FILE] [--free-ports]

Reuses the validation flow's tasks: each batch size is traced and archived once; each worker
count gets its own TorchServe (the sweep measures TorchServe; threads per worker follow the worker count);
each setting is registered anew. Per (batch size, workers), the in-process ceiling is measured while that
TorchServe is idle. Each row is measured by the benchmark stage's own code (tasks/measure/benchmark.py
measure_setting: closed loop at the row's concurrency, no lone client) and holds its typed result
(tasks/measure/sweep_rows.py). The best configuration -- most inferences/s with p90 within the limit
(or, --rank-by capacity, the highest Poisson rate whose p99 stays within the capacity's bound)
and no errors -- is marked. Writes sweep.json (the rows flat, and each setting's whole benchmark result
under `results`) and sweep.png in the run directory and a "sweep-<deployment>" table artifact;
TorchServe is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger

from flows.logs import install_expected_failures
from flows.stages import (
    deploy_task,
    free_for_tonight_task,
    package_task,
    start_task,
    stop_task,
    trace_task,
)
from tasks.common import keys
from tasks.common.config import BenchmarkConfig, ConfigError, RunConfig
from tasks.common.parameters import read
from tasks.common.runlog import Log
from tasks.common.sizing import ResolvedServing, resolve_serving
from tasks.engines.seam import Package, Started
from tasks.engines.served import Served
from tasks.engines.torchserve.engine import TorchServeEngine
from tasks.measure import benchmark as benchmark_stage
from tasks.measure.results import ClientCapacity
from tasks.measure.sweep_rows import RANKINGS, Setting, SweepRow, rank, verdict
from tasks.prepare.trace import TracedModel
from tasks.report.summary import new_run_dir
from tasks.serve.register import unregister
from tasks.serve.server import load_record
from tasks.verify.pairs import load_pool

Pairs = list[tuple[str, str]]

# An expected failure (a PipelineError) is logged as its message and fix, without a traceback (flows/logs.py).
install_expected_failures()

SWEEP_FILE = "sweep.json"
CHART_FILE = "sweep.png"
# The sweep re-registers TorchServe's model per setting through its management API: it measures TorchServe.
ENGINE = TorchServeEngine()


@dataclass(frozen=True)
class Grid:
    """The settings to measure: every batch size x worker count x delay x concurrency."""

    batch_sizes: list[int]
    workers: list[int]
    delays: list[int]
    concurrency: list[int]
    resolved: dict[int, ResolvedServing]  # per worker count: threads per worker, backend
    by: str = "throughput"  # the ranking (sweep_rows.RANKINGS); capacity: each row searches its capacity

    @classmethod
    def of(
        cls,
        config: RunConfig,
        batch_sizes: list[int] | None,
        workers: list[int] | None,
        delays: list[int] | None,
        concurrency: list[int] | None,
        by: str = "throughput",
    ) -> Grid:
        """Each list defaults to the config's value. Each worker count is resolved up front: a count this
        host cannot run is refused before anything starts."""
        serving = config.serving
        workers = workers or [resolve_serving(serving).initial_workers]
        return cls(
            batch_sizes or [serving.batch_size],
            workers,
            delays or [serving.max_batch_delay],
            concurrency or [config.benchmark.concurrency],
            {w: resolve_serving(serving.model_copy(update={"initial_workers": w})) for w in workers},
            by,
        )

    @property
    def size(self) -> int:
        return len(self.batch_sizes) * len(self.workers) * len(self.delays) * len(self.concurrency)

    @property
    def backend(self) -> str:
        return self.resolved[self.workers[0]].backend


def row_settings(settings: BenchmarkConfig, concurrency: int, capacity: bool = False) -> BenchmarkConfig:
    """The benchmark settings for one row: a closed loop of `concurrency` clients for `duration` s; no lone
    client (a concurrency of 1 in the grid is that); the capacity search only when the rows are ranked by it."""
    search = settings.capacity.model_copy(update={"enabled": capacity})
    return settings.model_copy(
        update={
            "mode": "closed",
            "concurrency": concurrency,
            "requests": None,
            "single_client_seconds": 0,
            "capacity": search,
        }
    )


def _free_cores(config: RunConfig, grid: Grid, log: Log) -> None:
    """Before trace: on Neuron a crashed night's workers still hold the cores the compile child needs."""
    for line in free_for_tonight_task(config.runs_dir, grid.backend, max(grid.workers)):
        log.warning(line)


Model = tuple[TracedModel, Package]  # one batch size, traced and archived


def _trace(config: RunConfig, grid: Grid, run_dir: Path) -> tuple[dict[int, Model], dict[int, dict | None]]:
    """Each batch size traced and archived once: {batch size: (traced, archive)}, and the compile cache's
    verdict per batch size (sweep.json)."""
    backend = grid.backend
    models: dict[int, Model] = {}
    compile_cache: dict[int, dict | None] = {}
    for batch_size in grid.batch_sizes:
        # the pipeline's compile cache: on Neuron a batch size compiled before is not compiled again
        traced = trace_task(config, backend, run_dir / f"model-b{batch_size}", batch_size=batch_size)
        compile_cache[batch_size] = traced.cache  # trace logs the verdict, naming the batch size
        models[batch_size] = (traced, package_task(ENGINE, traced, run_dir / "model_store"))
    return models, compile_cache


def _measure_model(
    started: Started, config: RunConfig, grid: Grid, count: int, batch_size: int, model: Model, pairs: Pairs, log: Log
) -> list[SweepRow]:
    """Every delay x concurrency of one model on a TorchServe with `count` workers."""
    (traced, mar), resolved = model, grid.resolved[count]
    rows: list[SweepRow] = []
    ceiling = None
    for index, delay in enumerate(grid.delays):
        served = Served(ENGINE, started, mar, deploy_task(ENGINE, started, mar, delay, count))
        if index == 0:  # workers registered and idle: the ceiling now, once per model
            ceiling = benchmark_stage.measure_ceiling(
                started.server_dir,
                traced.model_dir,
                pairs,
                resolved,
                config.benchmark.ceiling_seconds,
                log,
                config.benchmark.ceiling_windows,
            )
        for clients in grid.concurrency:
            setting = Setting(
                batch_size=batch_size,
                workers=count,
                threads_per_worker=resolved.threads_per_worker,
                max_batch_delay=delay,
                concurrency=clients,
            )
            log.info("sweep: %s", setting.label)
            bench = benchmark_stage.measure_setting(
                served,
                pairs,
                row_settings(config.benchmark, clients, grid.by == "capacity"),
                resolved,
                log,
                ceiling=ceiling,
            )
            rows.append(SweepRow(setting=setting, benchmark=bench))
    return rows


def _measure_workers(
    config: RunConfig, grid: Grid, count: int, models: dict[int, Model], pairs: Pairs, run_dir: Path, log: Log
) -> list[SweepRow]:
    """One TorchServe with `count` workers, every model measured on it in turn; stopped whatever happens."""
    rows: list[SweepRow] = []
    server_dir = run_dir / f"server-w{count}"
    try:
        first = models[grid.batch_sizes[0]][1]  # every package is in the one model store
        started = start_task(ENGINE, config.serving, grid.resolved[count], first, server_dir)
        for batch_size in grid.batch_sizes:
            rows += _measure_model(started, config, grid, count, batch_size, models[batch_size], pairs, log)
            # Its workers' processes exit before the next batch size's model loads: on Neuron each holds
            # its NeuronCore until then.
            server = load_record(server_dir)
            assert server is not None  # started above
            unregister(server, models[batch_size][1].model_name)
    finally:
        recorded = ENGINE.recorded(server_dir)
        if recorded is not None:
            stop_task(ENGINE, recorded)
    return rows


def _write(result: dict, rows: list[SweepRow], run_dir: Path, log: Log) -> None:
    """sweep.json (and, under `results`, each setting's whole benchmark result) and sweep.png."""
    data = {**result, "results": [row.model_dump(mode="json") for row in rows]}
    (run_dir / SWEEP_FILE).write_text(json.dumps(data, indent=2, default=str))
    try:
        from tasks.measure.charts import sweep_chart

        result["chart"] = str(sweep_chart(result["rows"], run_dir / CHART_FILE, result["p90_limit_ms"]))
    except ImportError as error:
        log.warning("no chart: %s (install matplotlib)", error)


def _artifacts(table: list[dict], line: str, run_dir: Path, client: ClientCapacity | None, backend: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    # Keyed like the pipeline's artifacts: a gpu sweep does not replace the cpu one's latest.
    suffix = keys.current_suffix(backend)
    create_table_artifact(key=keys.key(keys.SWEEP, suffix), table=table, description=line)
    alone = f"; load generator alone: {client.requests_per_s:.0f} requests/s" if client else ""
    create_markdown_artifact(
        key=keys.key(keys.SWEEP_SUMMARY, suffix),
        markdown=f"# Benchmark sweep\n\n{line}\n\nRun directory: `{run_dir}`{alone}",
        description="Benchmark sweep",
    )


@flow(name="bert-serving-sweep", log_prints=True)
def sweep(
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    batch_sizes: list[int] | None = None,
    workers: list[int] | None = None,
    delays: list[int] | None = None,
    concurrency: list[int] | None = None,
    p90_limit_ms: float | None = None,
    rank_by: str = "throughput",
) -> dict:
    """Benchmark every combination; mark the best one: by throughput within the p90 limit, or by capacity at
    the capacity's latency bound (rank_by="capacity": each row then runs the capacity search)."""
    log = get_run_logger()
    config, _ = read(config_file, None, overrides)
    torchserve_only(config)
    grid = Grid.of(config, batch_sizes, workers, delays, concurrency, rank_by)
    run_dir = new_run_dir(config.runs_dir)
    pairs, pool = load_pool(config.benchmark.pairs_file)
    log.info(
        "sweep in %s: batch sizes %s x workers %s x delays %s ms x concurrency %s (%d rows), %s",
        run_dir,
        grid.batch_sizes,
        grid.workers,
        grid.delays,
        grid.concurrency,
        grid.size,
        pool,
    )
    client = benchmark_stage.client_capacity(pairs, row_settings(config.benchmark, max(grid.concurrency)), log)
    _free_cores(config, grid, log)
    models, compile_cache = _trace(config, grid, run_dir)
    rows = [row for count in grid.workers for row in _measure_workers(config, grid, count, models, pairs, run_dir, log)]
    ranked = rank(rows, p90_limit_ms, by=rank_by)
    best = ranked[0] if ranked else None
    line = verdict(best, p90_limit_ms, by=rank_by)
    log.info(line)
    table = [row.table_row() for row in rows]
    result = {
        "run_dir": str(run_dir),
        "pairs": pool,
        "p90_limit_ms": p90_limit_ms,
        "rank_by": rank_by,
        "best": best.table_row() if best else None,
        "client_requests_per_s": client.requests_per_s if client else None,
        "compile_cache": compile_cache,
        "rows": table,
    }
    _write(result, rows, run_dir, log)
    _artifacts(table, line, run_dir, client, grid.backend)
    return result


def torchserve_only(config: RunConfig) -> None:
    if config.serving.night_engines() != ["torchserve"]:
        raise ConfigError(
            f"the sweep measures TorchServe (it re-registers the model per setting through TorchServe's management "
            f"API), not {', '.join(config.serving.night_engines())}",
            fix="leave serving.engine at torchserve for the sweep; a night compares engines (--engines torchserve,ray)",
        )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    from flows.cli import add_config_file_option, add_config_options

    parser = argparse.ArgumentParser(
        prog="python -m flows.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_file_option(parser)
    grid = parser.add_argument_group("grid (comma-separated lists; each defaults to the config's value)")
    grid.add_argument("--batch-sizes", type=_ints, metavar="N,N", help="e.g. 2,6")
    grid.add_argument("--workers", type=_ints, metavar="N,N", help="e.g. 1,2 (default: the config's, auto resolved)")
    grid.add_argument("--delays", type=_ints, metavar="MS,MS", help="max_batch_delay values in ms, e.g. 10,50")
    grid.add_argument("--concurrency", type=_ints, metavar="N,N", help="closed-loop clients, e.g. 1,8,64")
    parser.add_argument(
        "--p90-limit-ms", type=float, metavar="MS", help="mark the best configuration with p90 within this"
    )
    parser.add_argument(
        "--rank-by",
        choices=sorted(RANKINGS),
        default="throughput",
        help="throughput (within --p90-limit-ms) or capacity (each row searches the highest Poisson "
        "rate whose p99 stays within --capacity-bound-ms)",
    )
    add_config_options(parser, only=["max-length", "duration", "warmup", "free-ports", "runs-dir", "capacity-bound-ms"])
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from flows.cli import config_file, config_overrides

    args = parse_args(argv)
    chosen, overrides = config_file(args), config_overrides(args)
    try:
        config, _ = read(chosen, None, overrides)
        torchserve_only(config)
        for count in args.workers or []:
            resolve_serving(config.serving.model_copy(update={"initial_workers": count}))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = sweep(
        config_file=chosen,
        overrides=overrides,
        batch_sizes=args.batch_sizes,
        workers=args.workers,
        delays=args.delays,
        concurrency=args.concurrency,
        p90_limit_ms=args.p90_limit_ms,
        rank_by=args.rank_by,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        print(f"error: {result}", file=sys.stderr)
        return 1
    print(
        f"{'configuration':<22} {'inf/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'errors':>6} {'/ceiling':>8} "
        f"{'lone batch ms':>13} {'busy':>5}"
    )
    for row in result["rows"]:
        ratio = f"{row['served_over_ceiling']:.2f}" if row["served_over_ceiling"] is not None else "-"
        lone = f"{row['lone_batch_ms']:.0f}" if row["lone_batch_ms"] is not None else "-"
        busy = max(row["other_cores"] or 0, row["other_cores_ceiling"] or 0)
        mark = "  <- best" if row["best"] else ""
        print(
            f"{row['label']:<22} {row['inferences_per_s']:>7.1f} {row['p50_ms']:>8.0f} {row['p90_ms']:>8.0f} "
            f"{row['errors']:>6} {ratio:>8} {lone:>13} {busy:>5.2f}{mark}"
        )
    print("busy: CPUs other work on the host used during the row or its ceiling; above 0.1 x CPUs, rerun it")
    print(f"sweep: {Path(result['run_dir']) / SWEEP_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
