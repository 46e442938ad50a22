"""The validation flow: the tutorial's steps, each checked.

    python -m flows.validate [--config FILE] [--batch-size N] ... (see --help; flows/validate.py)
    validate(settings={"batch_size": 4}, overrides={"runs_dir": "/tmp/r"})
    validate(config_file="configs/gpu.yaml")

The parameters: a config file (none: the defaults, the documented night), the typed settings a person sets in
the UI's Run form (tasks/common/parameters.py RunSettings, checked by Prefect before a deployment's run is
created), and dotted overrides of any RunConfig field; later ones win.

trace -> archive -> start -> register -> check -> benchmark -> compare-buckets -> stop, on the engine
serving.engine names (TorchServe, Ray Serve), or on each of serving.engines in turn, from the same graph. The DAG
only: the work is in tasks/ (an engine's steps behind tasks/engines/seam.py), the stages' Prefect policy in
flows/stages.py, and flows/run.py makes sure stop runs and the summary is written whatever fails. A failed
stage fails the flow run, naming the stage.
"""

from __future__ import annotations

import os

# No network here or on many validation hosts: Prefect must not try to phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow

from flows.logs import install_expected_failures
from flows.run import Run, stop_what_the_run_left
from flows.stages import (
    benchmark_task,
    check_task,
    compare_buckets_task,
    core_map_task,
    deploy_task,
    free_for_tonight_task,
    from_mar_task,
    from_traced_task,
    gpu_map_task,
    package_task,
    ready_task,
    start_task,
    trace_task,
)
from tasks.common.config import RunConfig
from tasks.common.keys import current_suffix, engine_suffix
from tasks.common.parameters import RunSettings, given, read
from tasks.common.sizing import ResolvedServing, resolve_serving
from tasks.engines.installed import require_installed
from tasks.engines.night import EngineNight
from tasks.engines.registry import COMPARES_BUCKETS
from tasks.engines.seam import Package
from tasks.measure.benchmark import accuracy_of, raise_if_regressed
from tasks.prepare.trace import TracedModel
from tasks.verify.checks import raise_if_failed

# A PipelineError (the input, the host) is logged by Prefect's engines as its message and fix; a bug keeps its
# traceback (flows/logs.py). Here, so a deployment's run has it as well as the command line's.
install_expected_failures()


# Cancelled or crashed: Prefect's own hooks stop a server the run's process could not (flows/run.py).
@flow(
    name="bert-serving-validation",
    log_prints=True,
    on_cancellation=[stop_what_the_run_left],
    on_crashed=[stop_what_the_run_left],
)
def validate(
    config_file: str | None = None, settings: RunSettings = RunSettings(), overrides: dict | None = None
) -> dict:
    """Prove a BERT model still serves correctly and fast, on TorchServe or Ray Serve, or both side by side.

    Args:
        config_file: YAML run config holding what differs from the defaults (configs/), relative to the
            checkout or absolute; none: the defaults. Settings and overrides change it for this run.
        settings: this run's settings; each one left empty keeps the config file's value.
        overrides: any config field by dotted key, e.g. {"benchmark.warmup": 1}; the settings win over them.
    """
    config, replaced = read(config_file, settings, overrides)  # a bad config stops here, before anything starts
    require_installed(config.serving.night_engines())  # --engine ray without Ray: refused, naming ./setup.sh --ray
    resolved = resolve_serving(config.serving)
    parameters = {"config_file": config_file, "settings": given(settings), "overrides": overrides}
    with Run(config, resolved, parameters) as run:
        for line in replaced:
            run.log.warning(line)
        traced = build(run, config, resolved)
        for night in run.nights:  # one engine after the other, on the same graph
            with run.serving(night):
                serve(run, night, traced, config, resolved)
    assert run.summary is not None  # written on the way out of the run, whatever happened
    return run.summary.as_json()


def serve(
    run: Run, night: EngineNight, traced: TracedModel | None, config: RunConfig, resolved: ResolvedServing
) -> None:
    """One engine's stages: start -> register -> check -> benchmark -> compare-buckets (run.serving stops it)."""
    serving, engine = config.serving, night.engine
    with run.stage("start"):
        if config.model.mar is not None:  # the .mar is taken into the model store here (TorchServe only)
            stop_stale_servers(run, config, resolved)
            mar = from_mar_task(
                config.model.mar, run.dir / "model_store", serving.batch_size, serving.max_length, resolved.backend
            )
            night.package = Package(engine="torchserve", model_name=mar.model_name, path=mar.mar_file, info=mar.info)
            run.model_info = mar.info
        assert night.package is not None  # packaged at archive, or brought with --mar just now
        night.started = start_task(engine, serving, resolved, night.package, night.server_dir)
    with run.stage("register"):
        night.deployment = deploy_task(
            engine, night.started, night.package, serving.max_batch_delay, resolved.initial_workers
        )
        night.replicas = ready_task(engine, night.started, night.deployment)
        if resolved.backend == "neuron":  # N workers / replicas on N distinct NeuronCores, or the run fails here
            night.core_map = core_map_task(engine, night.started, night.replicas)
        elif resolved.backend == "cuda":  # which GPU each got (several may share one)
            night.gpu_map = gpu_map_task(engine, night.started, night.replicas)
    served = night.served()
    with run.stage("check"):
        night.checks = check_task(served, served, config.model, config.checks, serving.max_batch_delay)
        raise_if_failed(night.checks)
    if not config.benchmark.enabled:
        return
    with run.stage("benchmark"):
        suffix = engine_suffix(current_suffix(resolved.backend), night.name)
        night.benchmark = benchmark_task(
            served, traced, night.config, resolved, run.dir, accuracy=accuracy_of(night.checks), suffix=suffix
        )
        raise_if_regressed(night.benchmark)
    if config.benchmark.compare_buckets and len(served.info.buckets) > 1 and traced is not None:
        skipped = COMPARES_BUCKETS[night.name]
        if skipped is not None:
            run.stages.skip("compare-buckets", skipped)
            return
        with run.stage("compare-buckets"):
            night.buckets = compare_buckets_task(served, traced, config, resolved.initial_workers)


def stop_stale_servers(run: Run, config: RunConfig, resolved: ResolvedServing) -> None:
    """In the run's first stage: what a crashed night left serving, of any engine, is stopped, and on Neuron the
    cores waited for (tasks/engines/registry.py free_for_tonight)."""
    for line in free_for_tonight_task(config.runs_dir, resolved.backend, resolved.initial_workers):
        run.log.warning(line)


def build(run: Run, config: RunConfig, resolved: ResolvedServing) -> TracedModel | None:
    """Stale servers stopped, then trace -> archive (a package for each engine of the night, from the one graph),
    or what the user brought: --traced PATH.pt skips trace, --mar PATH.mar skips both (the .mar is then taken into
    the model store at start). A brought .mar has no graph this run can load in-process, so its TracedModel is
    None (no ceiling, no bucket comparison)."""
    model, serving = config.model, config.serving
    if model.mar is not None:
        run.stages.skip("trace", f"--mar {model.mar} given")
        run.stages.skip("archive", f"--mar {model.mar} given")
        return None
    if model.traced is not None:
        run.stages.skip("trace", f"--traced {model.traced} given")
    with run.stage("trace" if model.traced is None else "archive"):  # the first stage: stale servers first
        stop_stale_servers(run, config, resolved)
        if model.traced is not None:
            traced = from_traced_task(
                model, serving.batch_size, serving.max_length, resolved.backend, run.dir / "model"
            )
            run.model_info = traced.info
            package_all(run, traced)
            return traced
        traced = trace_task(config, resolved.backend, run.dir / "model")
        run.model_info, run.trace_cache = traced.info, traced.cache
    with run.stage("archive"):
        package_all(run, traced)
    return traced


def package_all(run: Run, traced: TracedModel) -> None:
    """The traced graph packed for each engine of the night: a .mar, a Serve package."""
    for night in run.nights:
        night.package = package_task(night.engine, traced, run.dir / "model_store")
