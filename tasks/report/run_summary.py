"""summary.json, typed: RunSummary is the record of one run, what a reader reads and diffs between nights.

Run._report (flows/run.py) builds it once, from the typed results of the stages, and writes it; the summary
artifact, the outcome the trend reads back and the run-config table are made from it. Users parse summary.json
with their own tooling, so its JSON Schema -- `schema()`, generated from these models -- is published in
docs/results.md (tests/unit/test_run_summary.py keeps the two equal). A field's name and meaning stay as they
are; a new field is added, never a renamed one.

Nothing here holds a key: a kept server is named by its key file's path.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from tasks.common.config import RunConfig, ServingConfig
from tasks.common.files import write_whole
from tasks.common.processes import Stopped
from tasks.common.sizing import ResolvedServing
from tasks.common.versions import package_versions
from tasks.measure.buckets import BucketComparison
from tasks.measure.results import BenchmarkResult
from tasks.report.provenance import provenance
from tasks.report.side_by_side import SideBySide
from tasks.serve.placement import CoreMap, GpuMap
from tasks.verify.checks import CheckResult

SUMMARY_FILE = "summary.json"
VERSIONS = (
    "torch",
    "transformers",
    "torchserve",
    "torch-model-archiver",
    "ray",
    "prefect",
    "torch-neuronx",
    "neuronx-cc",
    "numpy",
    "pydantic",
    "httpx",
)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageOutcome(_Part):
    """How one stage ended, in the order a run goes through them."""

    name: str
    status: Literal["ok", "failed", "interrupted", "skipped"]
    seconds: float = 0.0
    error: str | None = Field(None, description="the exception that failed or interrupted it")
    reason: str | None = Field(None, description="why it was skipped on purpose (--traced, --mar)")
    engine: str | None = Field(None, description="the engine a server stage ran on; null: trace and archive")


class CheckOutcome(_Part):
    """A check stage's verdict (its predictions are in the predictions artifact, not here)."""

    name: str
    passed: bool
    detail: str
    metrics: dict[str, Any] = {}
    engine: str | None = Field(None, description="the engine that served the answers")


class CompileCache(_Part):
    """The compile cache's verdict on the trace (tasks/prepare/cache.py)."""

    cache: Literal["hit", "miss", "off"]
    seconds_saved: float | None = None
    key: str | None = None
    reason: str | None = None
    dir: str | None = None


class ModelFacts(_Part):
    """What was served -- the kind its checkpoint decided, its labels and threshold -- what its graphs were
    compiled with and the parity they were held to (casting to 16 bits loosens it)."""

    kind: Literal["bi-encoder", "sequence-classification"]
    class_names: list[str]
    threshold: float | None = Field(None, description="bi-encoder: the cosine at or above which a pair is a paraphrase")
    backend: str
    compiler_args: list[str]
    parity_tolerance: float
    parity_max_abs_diff: float | None = None


class Security(_Part):
    token_auth: bool
    address: str
    warnings: list[str] = Field(description="what a reader must know when the defaults were loosened")

    @classmethod
    def of(cls, serving: ServingConfig) -> Security:
        return cls(token_auth=serving.token_auth, address=serving.address, warnings=serving.security_warnings())


class KeptServer(_Part):
    """Where a server kept up by --keep-serving answers; its key file's path, never a key."""

    inference_url: str
    management_url: str
    key_file: str


class Interrupted(_Part):
    """How a signal stopped the run (flows/interrupts.py): what it was, where the run was, what became of the server."""

    by: str = Field(
        description="Ctrl-C (SIGINT), SIGTERM (a cancellation or a stopped job), or a cancellation in Prefect "
        "(SIGTERM from its worker)"
    )
    stage: str | None = Field(description="the stage it stopped; null when it came between stages")
    during: str = Field(description="where the run was, in words: 'during benchmark', 'after check, before ...'")
    stopped: Stopped | None = Field(None, description="what stop did; null: no server was stopped")
    server: str = Field(
        description="what became of the server (TorchServe, Ray Serve), in the words the command line's last line "
        "repeats"
    )


class Git(_Part):
    commit: str = Field(description="the checkout's commit, or 'unknown'")
    dirty: bool | None = Field(description="tracked files differ from the commit")
    changed: int | None = None
    untracked: int | None = None
    error: str | None = None


class Provenance(_Part):
    """What code, on what machine, with what settings produced the run (tasks/report/provenance.py)."""

    git: Git
    instance_type: str
    source: str = Field(description="where the instance type came from: config, EC2's DMI, or none")
    compiler_args: list[str] | None
    config_hash: str = Field(description="a hash of the whole resolved configuration: same hash, same config")


class Host(_Part):
    """Which machine ran: enough to tell two nightly hosts (or a changed host) apart."""

    name: str
    os: str
    machine: str
    cpus: int | None
    physical_cores: int | None
    memory_gib: float


class RunSummary(_Part):
    """summary.json."""

    status: Literal["ok", "failed", "interrupted"]
    engine: str = Field(
        "torchserve",
        description="the engine the benchmark, core_map and gpu_map are of: TorchServe when it serves, else the one",
    )
    stages: list[StageOutcome]
    checks: list[CheckOutcome] = Field(description="every engine's, each naming its engine")
    benchmark: BenchmarkResult | None = Field(description="every benchmark figure (docs/benchmark.md); null: none")
    versions: dict[str, str]
    host: Host
    provenance: Provenance
    config: RunConfig = Field(description="the run's configuration, whole, every path absolute")
    run_dir: Path
    resolved: ResolvedServing = Field(description="what auto turned into on this host")
    kept_serving: bool
    security: Security
    server: KeptServer | None = None
    bucket_comparison: BucketComparison | None = None
    model: ModelFacts | None = Field(None, description="null when nothing was traced or brought")
    trace: CompileCache | None = None
    core_map: CoreMap | None = Field(None, description="neuron: which worker holds which NeuronCore")
    gpu_map: GpuMap | None = Field(None, description="cuda: which GPU each worker was given")
    pictures: dict[str, str] = Field({}, description="the summary's small PNGs in the run directory, by alt text")
    interrupted: Interrupted | None = Field(None, description="how the run was stopped from outside; null if not")
    side_by_side: SideBySide | None = Field(
        None, description="a night of several engines (serving.engines): each one's figures, and their labels compared"
    )

    def failed_stages(self) -> list[StageOutcome]:
        return [stage for stage in self.stages if stage.status == "failed"]

    def for_engine(self, engine: str) -> RunSummary:
        """One engine's night out of a night of several: the night's own stages and that engine's, its checks, its
        benchmark and placement, its status -- what that engine's artifacts (outcome, benchmark, trend) are of."""
        if self.side_by_side is None or engine == self.engine:
            picked = self.model_copy(update={"side_by_side": None})
        else:
            column = next(c for c in self.side_by_side.engines if c.engine == engine)
            picked = self.model_copy(
                update={
                    "benchmark": column.benchmark,
                    "core_map": column.core_map,
                    "gpu_map": column.gpu_map,
                    "bucket_comparison": None,
                    "pictures": {},
                    "side_by_side": None,
                }
            )
        stages = [stage for stage in self.stages if stage.engine in (None, engine)]
        checks = [check for check in self.checks if check.engine in (None, engine)]
        failed = any(stage.status == "failed" for stage in stages) or not all(check.passed for check in checks)
        status = "failed" if failed else "interrupted" if self.interrupted else "ok"
        return picked.model_copy(update={"engine": engine, "stages": stages, "checks": checks, "status": status})

    def write(self, run_dir: Path) -> Path:
        """summary.json, written whole or not at all: a reader -- the command line's last line, an interrupt's
        backstop writing it again -- never sees half of it."""
        # Python's json, as summary.json was always written: a figure not measured stays NaN (pydantic's own JSON
        # would write null, which a reader's float no longer is), a path its text.
        return write_whole(run_dir / SUMMARY_FILE, json.dumps(self.model_dump(), indent=2, default=str))

    def as_json(self) -> dict[str, Any]:
        """The same as summary.json holds it: what the flow returns."""
        return self.model_dump(mode="json")


def schema() -> str:
    """summary.json's JSON Schema, as docs/results.md publishes it. Without defaults: summary.json holds every
    field, and a default path (the checkout's runs/, the compile cache) would be the generating host's."""
    return json.dumps(_without_defaults(RunSummary.model_json_schema(mode="serialization")), indent=2) + "\n"


def _without_defaults(node: Any, names: bool = False) -> Any:
    """`names`: node maps property names to schemas, where a property may be called "default"."""
    if isinstance(node, dict):
        return {
            key: _without_defaults(value, key in ("properties", "$defs"))
            for key, value in node.items()
            if names or key != "default"
        }
    if isinstance(node, list):
        return [_without_defaults(value) for value in node]
    return node


class StagesRecord(Protocol):
    """How each stage ended (flows/stages.py Stages: flows/ imports tasks/, never the other way)."""

    def as_list(self) -> list[dict]: ...


def summarize(
    stages: StagesRecord,
    checks: list[CheckResult],
    bench: BenchmarkResult | None,
    config: RunConfig,
    resolved: ResolvedServing,
    **facts: Any,
) -> RunSummary:
    """The run's summary: `facts` are RunSummary's other fields (run_dir, kept_serving, model, ...); the status is
    failed when a stage or a check failed (before any signal: a stage the signal ended is interrupted, not failed),
    else interrupted when `interrupted` is given, else ok."""
    outcomes = [StageOutcome.model_validate(stage) for stage in stages.as_list()]
    failed = any(stage.status == "failed" for stage in outcomes) or not all(check.passed for check in checks)
    model = ModelFacts.model_validate(facts["model"]) if facts.get("model") is not None else None
    dumped = config.model_dump(mode="json")
    # Security follows the config; a run keeps no server unless it says so.
    facts = {
        "security": Security.of(config.serving),
        "kept_serving": False,
        "engine": config.serving.reference_engine(),
        **facts,
        "model": model,
    }
    return RunSummary(
        status="failed" if failed else "interrupted" if facts.get("interrupted") else "ok",
        stages=outcomes,
        checks=[CheckOutcome.model_validate(check.model_dump(exclude={"predictions"})) for check in checks],
        benchmark=bench,
        versions=versions(),
        host=host(),
        provenance=Provenance.model_validate(provenance(dumped, model.model_dump() if model else None)),
        config=config,
        resolved=resolved,
        **facts,
    )


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **package_versions(*VERSIONS)}


def host() -> Host:
    import psutil

    return Host(
        name=platform.node(),
        os=platform.platform(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        physical_cores=psutil.cpu_count(logical=False),
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
    )
