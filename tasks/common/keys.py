"""Artifact keys, one set per deployment: the cpu, inf2 and gpu deployments no longer overwrite each
other's latest artifact, and a run's artifacts are found again by deployment (the trend, the
regression history).

    <kind>-<suffix>    suffix: the deployment's name, slugified    summary-nightly-cpu-embedded
                               a run without a deployment: adhoc-<backend>    benchmark-adhoc-cpu

Prefect allows lowercase letters, digits and dashes in a key; `slug` makes any name fit.
"""

from __future__ import annotations

import re

from tasks.common.runlog import stage_logger

SUMMARY, PREDICTIONS, ACCURACY, BENCHMARK = "summary", "predictions", "accuracy", "benchmark"
LENGTH_BUCKETS, RUN_CONFIG, TREND = "length-buckets", "run-config", "trend"
OUTCOME = "outcome"  # machine-readable: status, each stage's status, regressed figures (the trend reads it back)
ENGINES = "engines"  # a night of several engines: their figures side by side
SWEEP, SWEEP_SUMMARY = "sweep", "sweep-summary"  # flows/sweep.py's table and verdict
KINDS = (
    SUMMARY,
    PREDICTIONS,
    ACCURACY,
    BENCHMARK,
    LENGTH_BUCKETS,
    RUN_CONFIG,
    TREND,
    OUTCOME,
    SWEEP,
    SWEEP_SUMMARY,
    ENGINES,
)
ADHOC = "adhoc"
LEGACY = {BENCHMARK: "benchmark"}  # the one global key before keys were per deployment: history still reads it


def slug(name: str) -> str:
    """Lowercase, [a-z0-9-] only, no leading/trailing or repeated dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", name.lower())).strip("-") or "unnamed"


def suffix(deployment: str | None, backend: str | None) -> str:
    """The deployment's slug; for a run without a deployment, adhoc-<backend>."""
    return slug(deployment) if deployment else f"{ADHOC}-{slug(backend or 'unknown')}"


def engine_suffix(suffix_: str, engine: str) -> str:
    """An engine's own artifact keys (its predictions, benchmark, outcome, trend): a Ray Serve night's never mix
    with a TorchServe night's in a history. TorchServe's keep the plain suffix, as before there were engines, so
    the nights already recorded stay its history."""
    return suffix_ if engine == "torchserve" else f"{suffix_}-{slug(engine)}"


def key(kind: str, suffix_: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}: one of {', '.join(KINDS)}")
    return f"{kind}-{suffix_}"


def deployment_name() -> str | None:
    """This flow run's deployment, None outside one (or outside a flow run).

    Outside a deployment nothing asks the API. In one, a name the Prefect API does not give is not
    guessed: the run is keyed as an ad-hoc run, and a warning says so (the deployment's trend and regression
    history then miss this run)."""
    from prefect.runtime import deployment

    from tasks.common.prefect_api import API_ERRORS

    try:
        return deployment.name or None
    except API_ERRORS as error:  # the API failed to answer: say what the keys lose, then go on as ad-hoc
        stage_logger(__name__).warning(
            "could not read this flow run's deployment name from the Prefect API (%s: %s): its artifacts go "
            "under the ad-hoc keys (%s-<backend>), not the deployment's, so the deployment's trend and "
            "regression history will not include this run",
            type(error).__name__,
            error,
            ADHOC,
        )
        return None


def current_suffix(backend: str | None) -> str:
    return suffix(deployment_name(), backend)
