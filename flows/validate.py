"""The validation flow: trace -> archive -> start -> register -> check -> benchmark -> stop.

    python -m flows.validate [--config FILE] [--batch-size N] ... (see --help)

The DAG only: the work is in tasks/. stop runs whatever failed before it, and the summary
and artifacts are written either way; a failed stage or check fails the flow run after that.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

# No network here or on many validation hosts: Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from tasks.build import archive as archive_stage  # noqa: E402
from tasks.measure import benchmark as benchmark_stage  # noqa: E402
from tasks.measure import buckets as bucket_compare  # noqa: E402
from tasks.verify import checks as check_stage  # noqa: E402
from tasks.serve import register as register_stage  # noqa: E402
from tasks.serve import server as server_stage  # noqa: E402
from tasks.build import trace as trace_stage  # noqa: E402
from tasks.config import ConfigError, load_config, resolve_serving  # noqa: E402
from tasks.report.summary import (  # noqa: E402
    Stages,
    build_summary,
    new_run_dir,
    publish_artifacts,
    publish_run_config,
    write_summary,
)

STAGES = ["trace", "archive", "start", "register", "check", "benchmark", "stop"]


def _retry_register(task, task_run, state) -> bool:
    """Retry connection errors and 5xx while TorchServe starts; a 4xx is a verdict."""
    try:
        state.result()
    except register_stage.RegisterError as error:
        return error.retryable
    except Exception:
        return False
    return False


trace_task = task(trace_stage.trace, name="trace", cache_policy=NO_CACHE)
archive_task = task(archive_stage.archive, name="archive", cache_policy=NO_CACHE)
start_task = task(server_stage.start, name="start", cache_policy=NO_CACHE)
ping_task = task(server_stage.wait_healthy, name="wait-healthy", cache_policy=NO_CACHE)
register_task = task(register_stage.register, name="register", cache_policy=NO_CACHE, retries=3,
                     retry_delay_seconds=[2, 5, 10], retry_condition_fn=_retry_register)
check_task = task(check_stage.run_checks, name="check", cache_policy=NO_CACHE)
benchmark_task = task(benchmark_stage.run, name="benchmark", cache_policy=NO_CACHE)
stop_task = task(server_stage.stop, name="stop", cache_policy=NO_CACHE)
stop_stale_task = task(server_stage.stop_stale, name="stop-stale", cache_policy=NO_CACHE)
compare_task = task(bucket_compare.compare, name="compare-buckets", cache_policy=NO_CACHE)


class Terminated(BaseException):
    """SIGTERM (a cancelled flow run, a killed job) turned into an exception so `finally` runs."""


class StageFailed(Exception):
    """Fails the flow run with a message naming the failed stage(s); the summary artifact has the rest."""

    def __init__(self, stages: Stages):
        super().__init__("; ".join(f"stage {r.name} failed: {(r.error or '')[:500]}" for r in stages.failed()))


@contextlib.contextmanager
def sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@flow(name="bert-serving-validation", log_prints=True)
def validate(config_file: str = "configs/default.yaml", overrides: dict[str, Any] | None = None) -> dict:
    """Prove a BERT model still serves correctly and fast on TorchServe."""
    log = get_run_logger()
    config = load_config(config_file, overrides)  # a bad config stops here, before anything starts
    resolved = resolve_serving(config.serving)
    serving = config.serving
    run_dir = new_run_dir(config.runs_dir)
    log.info("run directory %s; %d workers x %d threads (%s)", run_dir, resolved.initial_workers,
             resolved.threads_per_worker, resolved.cores_source)
    for warning in serving.security_warnings():
        log.warning(warning)
    stages = Stages(STAGES)
    checks: list[check_stage.CheckResult] = []
    bench = comparison = None
    server = None
    keep = False
    try:
        with sigterm_raises():
            with stages.run("trace"):
                traced = trace_task(config.model, serving.batch_size, serving.max_length, run_dir / "model",
                                    resolved.backend, serving.buckets())
            with stages.run("archive"):
                mar = archive_task(traced, run_dir / "model_store")
            with stages.run("start"):
                for line in stop_stale_task(config.runs_dir):
                    log.warning(line)
                server = start_task(serving, resolved, mar.model_store, run_dir / "server")
                ping_task(server, serving.startup_timeout)
            with stages.run("register"):
                register_task(server, mar, serving.batch_size, serving.max_batch_delay, resolved.initial_workers)
            with stages.run("check"):
                checks = check_task(server, mar.model_name, traced.class_names, config.model, config.checks,
                                    serving.batch_size, serving.max_batch_delay, serving.max_length)
                failed = [c for c in checks if not c.passed]
                if failed:
                    raise check_stage.CheckFailed("; ".join(f"{c.name}: {c.detail}" for c in failed))
            keep = config.keep_serving
            if config.benchmark.enabled:
                with stages.run("benchmark"):
                    bench = benchmark_task(server, mar.model_name, traced.model_file, config, resolved, run_dir, log)
                    if config.benchmark.compare_buckets and len(traced.buckets) > 1:
                        # The same graphs narrowed to max_length: the tutorial's padding, same traffic.
                        single = archive_task(traced, mar.model_store,
                                              name=bucket_compare.single_bucket_model_name(mar.model_name),
                                              handler_config={"length_buckets": [serving.max_length]})
                        register_task(server, single, serving.batch_size, serving.max_batch_delay,
                                      resolved.initial_workers)
                        comparison = compare_task(server, mar.model_name, traced.buckets, serving.max_length,
                                                  config, log)
                    if bench.regression and bench.regression["status"] == "regressed" \
                            and bench.regression["action"] == "fail":
                        raise benchmark_stage.BenchmarkError(f"regression: {bench.regression['message']}")
    except Exception as error:
        if not stages.failed():
            raise
        raise StageFailed(stages) from error  # the Failed state then names the stage
    finally:
        # The run directory records a started server even when start itself did not return.
        server = server or server_stage.load_record(run_dir / "server")
        stop_error = None
        if server is not None and not keep:
            try:
                with stages.run("stop"):
                    stop_task(server)
            except Exception as error:  # recorded; raised once the summary and artifacts are out
                stop_error = error
        summary = build_summary(
            stages, checks, bench, config.model_dump(mode="json"),
            {"run_dir": str(run_dir), "resolved": resolved.model_dump(), "kept_serving": keep,
             "security": {"token_auth": serving.token_auth, "address": serving.address,
                          "warnings": serving.security_warnings()},
             "server": _server_facts(server) if keep else None,
             "bucket_comparison": comparison.model_dump() if comparison else None},
        )
        write_summary(run_dir, summary)
        publish_artifacts(summary, checks, run_dir)
        publish_run_config({"config_file": config_file, "overrides": overrides}, summary)
        if comparison is not None:
            bucket_compare.publish(comparison)
        log.info("summary: %s", run_dir / "summary.json")
        if stop_error is not None:
            raise StageFailed(stages) from stop_error
    if keep:
        log.info("TorchServe kept serving at %s; stop it with: python -m flows.stop", server.inference_url)
    return summary


def _server_facts(server) -> dict:
    """Where a kept server is; the key file's path, never a key."""
    return {"inference_url": server.inference_url, "management_url": server.management_url,
            "key_file": str(server.key_file)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.validate",
        description="Trace, archive, serve, check and benchmark a BERT paraphrase model on TorchServe.",
    )
    parser.add_argument("--config", default="configs/default.yaml", help="YAML run config (default: %(default)s)")
    parser.add_argument("--model", dest="model.source", help="'embedded', a checkpoint directory, or a hub id")
    parser.add_argument("--kind", dest="model.kind", choices=["auto", "bi-encoder", "sequence-classification"])
    parser.add_argument("--batch-size", dest="serving.batch_size", type=int)
    parser.add_argument("--max-length", dest="serving.max_length", type=int)
    parser.add_argument("--max-batch-delay", dest="serving.max_batch_delay", type=int, help="ms")
    parser.add_argument("--workers", dest="serving.initial_workers", help="number, or 'auto'")
    parser.add_argument("--backend", dest="serving.backend", choices=["auto", "neuron", "cuda", "cpu"],
                        help="where to compile and serve (default auto)")
    parser.add_argument("--instance-type", dest="serving.instance_type",
                        help="e.g. inf2.xlarge, to count NeuronCores where neuron-ls is missing")
    parser.add_argument("--free-ports", dest="serving.free_ports", action="store_const", const=True,
                        help="pick free ports instead of 8080-8082")
    parser.add_argument("--address", dest="serving.address",
                        help="address TorchServe binds to (default 127.0.0.1; anything else warns)")
    parser.add_argument("--no-token-auth", dest="serving.token_auth", action="store_const", const=False,
                        help="turn TorchServe token auth off, for legacy clients that send no token (warns)")
    parser.add_argument("--accuracy-file", dest="checks.accuracy_file",
                        help="labelled pairs (MRPC TSV) to send through the server, e.g. msr_paraphrase_dev.tsv")
    parser.add_argument("--min-accuracy", dest="checks.min_accuracy", type=float,
                        help="fail the run when accuracy on --accuracy-file is below this (0-1)")
    parser.add_argument("--concurrency", dest="benchmark.concurrency", type=int)
    parser.add_argument("--duration", dest="benchmark.duration", type=float, help="benchmark seconds")
    parser.add_argument("--no-benchmark", dest="benchmark.enabled", action="store_const", const=False)
    parser.add_argument("--load", dest="benchmark.mode", choices=["closed", "open"],
                        help="closed: --concurrency clients; open: --rate requests/s, latency from intended send")
    parser.add_argument("--rate", dest="benchmark.rate", type=float, help="open loop: requests/s")
    parser.add_argument("--requests", dest="benchmark.requests", type=int,
                        help="measure this many requests instead of --duration s")
    parser.add_argument("--pairs-file", dest="benchmark.pairs_file",
                        help="pool of pairs to send (MRPC TSV or golden-pairs YAML)")
    parser.add_argument("--regression", dest="benchmark.regression_action", choices=["warn", "fail"],
                        help="what a throughput/p90 regression against earlier runs does (default warn)")
    parser.add_argument("--runs-dir", dest="runs_dir", help="where run directories go (default: runs/)")
    parser.add_argument("--keep-serving", dest="keep_serving", action="store_const", const=True,
                        help="leave TorchServe up after check; python -m flows.stop ends it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    config_file = args.pop("config")
    overrides = {key: value for key, value in args.items() if value is not None}
    try:
        # Refuse a bad config, or more workers than this host can hold, before Prefect starts anything.
        resolve_serving(load_config(config_file, overrides).serving)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = validate(config_file=config_file, overrides=overrides, return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        print(f"error: {summary}\nsummary: {Path(load_config(config_file, overrides).runs_dir) / 'latest'}",
              file=sys.stderr)
        return 1
    print(f"status: {summary['status']}  summary: {Path(summary['run_dir']) / 'summary.json'}")
    if summary["server"]:
        facts = summary["server"]
        print(f"TorchServe is still serving.\n  inference:  {facts['inference_url']}\n"
              f"  management: {facts['management_url']}\n"
              f"  keys:       {facts['key_file']} (\"inference\" and \"management\" keys; send as Bearer tokens)\n"
              "  stop it:    python -m flows.stop")
    return 0 if summary["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
