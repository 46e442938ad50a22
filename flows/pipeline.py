"""The validation flow: the tutorial's steps, each checked.

    python -m flows.validate [--config FILE] [--batch-size N] ... (see --help; flows/validate.py)
    validate(settings={"batch_size": 4}, overrides={"runs_dir": "/tmp/r"})
    validate(config_file="configs/gpu.yaml")

The parameters: a config file (none: the defaults, the documented night), the typed settings a person sets in
the UI's Run form (tasks/common/parameters.py RunSettings, checked by Prefect before a deployment's run is
created), and dotted overrides of any RunConfig field; later ones win.

trace -> archive -> start -> register -> check -> benchmark -> compare-buckets -> stop. The DAG
only: the work is in tasks/, the stages' Prefect policy in flows/stages.py, and flows/run.py makes
sure stop runs and the summary is written whatever fails. A failed stage fails the flow run,
naming the stage.
"""

from __future__ import annotations

import os

# No network here or on many validation hosts: Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow

from flows.logs import install_expected_failures
from flows.run import Run, stop_what_the_run_left
from flows.stages import (
    archive_task,
    benchmark_task,
    check_task,
    compare_buckets_task,
    core_map_task,
    free_for_tonight_task,
    from_mar_task,
    from_traced_task,
    gpu_map_task,
    ping_task,
    register_task,
    start_task,
    trace_task,
)
from tasks.common.config import RunConfig
from tasks.common.parameters import RunSettings, given, read
from tasks.common.sizing import ResolvedServing, resolve_serving
from tasks.measure.benchmark import accuracy_of, raise_if_regressed
from tasks.prepare.archive import Archive
from tasks.prepare.trace import TracedModel
from tasks.verify.checks import raise_if_failed

# A PipelineError (the input, the host) is logged by Prefect's engines as its message and fix; a bug keeps its
# traceback (flows/logs.py). Here, so a deployment's run has it as well as the command line's.
install_expected_failures()


# Cancelled or crashed: Prefect's own hooks stop a TorchServe the run's process could not (flows/run.py).
@flow(
    name="bert-serving-validation",
    log_prints=True,
    on_cancellation=[stop_what_the_run_left],
    on_crashed=[stop_what_the_run_left],
)
def validate(
    config_file: str | None = None, settings: RunSettings = RunSettings(), overrides: dict | None = None
) -> dict:
    """Prove a BERT model still serves correctly and fast on TorchServe.

    Args:
        config_file: YAML run config holding what differs from the defaults (configs/), relative to the
            checkout or absolute; none: the defaults. Settings and overrides change it for this run.
        settings: this run's settings; each one left empty keeps the config file's value.
        overrides: any config field by dotted key, e.g. {"benchmark.warmup": 1}; the settings win over them.
    """
    config, replaced = read(config_file, settings, overrides)  # a bad config stops here, before anything starts
    resolved = resolve_serving(config.serving)
    serving, model = config.serving, config.model
    parameters = {"config_file": config_file, "settings": given(settings), "overrides": overrides}
    with Run(config, resolved, parameters) as run:
        for line in replaced:
            run.log.warning(line)
        traced, mar = build(run, config, resolved)
        with run.stage("start"):
            if model.mar is not None:
                stop_stale_servers(run, config, resolved)
                mar = from_mar_task(
                    model.mar, run.dir / "model_store", serving.batch_size, serving.max_length, resolved.backend
                )
                run.model_info = mar.info
            assert mar is not None  # built above, or brought with --mar just now
            run.server = start_task(serving, resolved, mar.model_store, run.dir / "server")
            ping_task(run.server, serving.startup_timeout)
        with run.stage("register"):
            register_task(run.server, mar, serving.max_batch_delay, resolved.initial_workers)
            if resolved.backend == "neuron":  # N workers on N distinct NeuronCores, or the run fails here
                run.core_map = core_map_task(run.server, mar.model_name, resolved.initial_workers)
            elif resolved.backend == "cuda":  # which GPU each worker got (several may share one)
                run.gpu_map = gpu_map_task(run.server, mar.model_name)
        with run.stage("check"):
            run.checks = check_task(run.server, mar, model, config.checks, serving.max_batch_delay)
            raise_if_failed(run.checks)
        if config.benchmark.enabled:
            with run.stage("benchmark"):
                run.benchmark = benchmark_task(
                    run.server, mar, traced, config, resolved, run.dir, accuracy=accuracy_of(run.checks)
                )
                raise_if_regressed(run.benchmark)
            if config.benchmark.compare_buckets and len(mar.info.buckets) > 1 and traced is not None:
                with run.stage("compare-buckets"):
                    run.buckets = compare_buckets_task(run.server, mar, traced, config, resolved.initial_workers)
    assert run.summary is not None  # written on the way out of the run, whatever happened
    return run.summary.as_json()


def stop_stale_servers(run: Run, config: RunConfig, resolved: ResolvedServing) -> None:
    """In the run's first stage: what a crashed night left serving is stopped, and on Neuron the cores waited for
    (tasks/serve/server.py free_for_tonight)."""
    for line in free_for_tonight_task(config.runs_dir, resolved.backend, resolved.initial_workers):
        run.log.warning(line)


def build(run: Run, config: RunConfig, resolved: ResolvedServing) -> tuple[TracedModel | None, Archive | None]:
    """Stale servers stopped, then trace -> archive, or what the user brought: --traced PATH.pt skips trace,
    --mar PATH.mar skips both (the .mar is then taken into the model store at start). A brought .mar has no
    graph this run can load in-process, so its TracedModel is None (no ceiling, no bucket comparison)."""
    model, serving = config.model, config.serving
    if model.mar is not None:
        run.stages.skip("trace", f"--mar {model.mar} given")
        run.stages.skip("archive", f"--mar {model.mar} given")
        return None, None
    if model.traced is not None:
        run.stages.skip("trace", f"--traced {model.traced} given")
    with run.stage("trace" if model.traced is None else "archive"):  # the first stage: stale servers first
        stop_stale_servers(run, config, resolved)
        if model.traced is not None:
            traced = from_traced_task(
                model, serving.batch_size, serving.max_length, resolved.backend, run.dir / "model"
            )
            run.model_info = traced.info
            return traced, archive_task(traced, run.dir / "model_store")
        traced = trace_task(config, resolved.backend, run.dir / "model")
        run.model_info, run.trace_cache = traced.info, traced.cache
    with run.stage("archive"):
        return traced, archive_task(traced, run.dir / "model_store")
