"""One validation run as a context: whatever happens inside `with Run(...)`, TorchServe is stopped, the
summary and artifacts are written, and a failure ends the flow run naming its stage.

    with Run(config, resolved, parameters) as run:
        with run.stage("trace"):
            ...

Interruptions go through Prefect's own machinery, not around it: Ctrl-C raises KeyboardInterrupt, and
SIGTERM -- a worker cancelling the run, a killed job -- raises Prefect's TerminationSignal from the
handler its engine installs (which is how it acknowledges a cancellation). Either passes through
__exit__, which stops TorchServe without the Prefect API (a Ctrl-C in a terminal also stops the
temporary API server), writes summary.json with status "interrupted", and lets the exception go on to
the engine: Cancelled for a cancellation, Crashed otherwise.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
from prefect import get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.settings import PREFECT_API_URL

from flows.stages import INTERRUPTS, StageFailed, Stages, stop_task
from flows.stop import command as stop_command
from tasks.common.config import RunConfig
from tasks.common.parameters import read
from tasks.common.sizing import ResolvedServing
from tasks.report.events import emit_regression, run_page
from tasks.report.run_summary import Interrupted, KeptServer, ModelFacts, RunSummary, summarize
from tasks.report.summary import new_run_dir, publish_artifacts, publish_run_config
from tasks.serve.server import Server, load_record, stop_stale
from tasks.serve.server import stop as stop_server

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun, State

    from serving.contract import ModelInfo
    from tasks.common.config import ChecksConfig
    from tasks.common.processes import Stopped
    from tasks.measure.buckets import BucketComparison
    from tasks.measure.results import BenchmarkResult
    from tasks.serve.placement import CoreMap, GpuMap
    from tasks.verify.checks import CheckResult


def interruption(error: BaseException | None) -> str | None:
    """How the run was stopped from outside, in words; None if it was not."""
    if isinstance(error, KeyboardInterrupt):
        return "Ctrl-C (SIGINT)"
    if isinstance(error, TerminationSignal):
        return f"{signal.Signals(error.signal).name} (a cancellation or a stopped job)"
    return None


class Run:
    """The run directory, each stage's record, and the typed results so far."""

    def __init__(self, config: RunConfig, resolved: ResolvedServing, parameters: dict):
        # parameters: the flow run's, as a reader of the run-config artifact needs them --
        # {"config_file": str, "settings": {name: value, the given ones only}, "overrides": dict | None}
        self.config, self.resolved, self.parameters = config, resolved, parameters
        self.log = get_run_logger()
        self.started = datetime.now(UTC)  # the trend's "started" for this run, as Prefect's for the others
        self.dir = new_run_dir(config.runs_dir)
        self.stages = Stages()
        self.server: Server | None = None
        self.checks: list[CheckResult] = []
        self.benchmark: BenchmarkResult | None = None
        self.buckets: BucketComparison | None = None
        # the traced model's facts (compiler arguments, parity) once trace is done
        self.model_info: ModelInfo | None = None
        self.core_map: CoreMap | None = None  # neuron: which worker holds which NeuronCore, once registered
        self.gpu_map: GpuMap | None = None  # cuda: which GPU each worker was given, once registered
        self.trace_cache: dict | None = None  # the compile cache's verdict: hit or miss, seconds saved
        self.summary: RunSummary | None = None  # summary.json, once written (on the way out)
        self.interrupted: str | None = None  # how the run was stopped from outside, if it was
        self.stopped: Stopped | None = None  # what stop did: processes stopped, escalated

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self.stages.run(name)

    @property
    def keep_serving(self) -> bool:
        """--keep-serving leaves TorchServe up only for a model that passed its checks."""
        return self.config.keep_serving and self.stages.records["check"].status == "ok"

    def __enter__(self) -> Run:
        self.log.info(
            "run directory %s; %d workers x %d threads (%s)",
            self.dir,
            self.resolved.initial_workers,
            self.resolved.threads_per_worker,
            self.resolved.cores_source,
        )
        for warning in self.config.serving.security_warnings():
            self.log.warning(warning)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        self.interrupted = interruption(error)
        stop_error, again = self._stop()
        self._report()
        if not self.interrupted:
            self._tell()
        if self.interrupted:
            self.log.warning(self.interruption_line())
            if again is not None and interruption(error) is None:
                raise again  # interrupted while stopping: TorchServe is down, now stop the run too
            return False  # on to Prefect's engine: Cancelled (a cancellation) or Crashed
        if stop_error is not None:
            raise StageFailed(self.stages) from stop_error
        if isinstance(error, Exception) and self.stages.failed():
            raise StageFailed(self.stages) from error  # the Failed state then names the stage
        if self.keep_serving and self.server is not None:
            self.log.info(
                "TorchServe kept serving at %s; stop it with: %s", self.server.inference_url, stop_command(self.dir)
            )
        return False

    def _stop(self) -> tuple[BaseException | None, BaseException | None]:
        """Stop TorchServe; return (the stop's error, an interruption that arrived during it).

        After an interruption the plain function runs, not the Prefect task: the Prefect API may be
        gone (a Ctrl-C in a terminal stops the temporary one). A further Ctrl-C or SIGTERM while
        stopping restarts the stop with no grace -- straight to kill -- so no process is left either way.
        """
        # The run directory records a started server even when start itself did not return.
        self.server = self.server or load_record(self.dir / "server")
        if self.server is None or (self.keep_serving and not self.interrupted):
            return None, None
        again: list[BaseException] = []
        if self.interrupted:
            self.log.warning("interrupted by %s: stopping TorchServe", self.interrupted)
        try:
            with self.stage("stop"):
                self._stop_surely(self.server, again)
        except Exception as error:  # recorded; raised once the summary and artifacts are out
            return error, again[0] if again else None
        return None, again[0] if again else None

    def _stop_surely(self, server: Server, again: list[BaseException]) -> None:
        while True:
            try:
                try:
                    if again or self.interrupted:
                        self.stopped = stop_server(server, **({"grace": 0.0} if again else {}))
                    else:
                        self.stopped = stop_task(server)
                    return
                except INTERRUPTS as signalled:
                    again.append(signalled)
            except INTERRUPTS as signalled:  # arrived while handling the one before
                again.append(signalled)
            self.interrupted = self.interrupted or interruption(again[0])
            self.log.warning("interrupted again while stopping TorchServe: killing it now")

    def _report(self) -> None:
        from tasks.common.keys import current_suffix, deployment_name
        from tasks.report.summary import pictures
        from tasks.report.trend import publish_trend

        drawn = pictures(self.benchmark, self.dir, self.log)  # before the summary: it names them
        self.summary = summarize(
            self.stages,
            self.checks,
            self.benchmark,
            self.config,
            self.resolved,
            run_dir=self.dir,
            kept_serving=self.keep_serving,
            server=_server_facts(self.server) if self.keep_serving and self.server is not None else None,
            bucket_comparison=self.buckets,
            model=_model_facts(self.model_info, self.config.checks),
            trace=self.trace_cache,
            core_map=self.core_map,
            gpu_map=self.gpu_map,
            pictures=drawn,
            interrupted=Interrupted(by=self.interrupted, stopped=self.stopped) if self.interrupted else None,
        )
        self.summary.write(self.dir)
        if self.interrupted and not _api_answers():
            self.log.warning(
                "the Prefect API does not answer: artifacts not published; the summary is in %s",
                self.dir / "summary.json",
            )
            return
        suffix = current_suffix(self.resolved.backend)  # artifact keys per deployment (ad-hoc: per backend)
        publish_artifacts(self.summary, self.checks, self.dir, self.buckets, suffix)
        publish_run_config(self.parameters, self.summary, suffix)
        publish_trend(
            deployment_name() or suffix, suffix, _run_name(self.dir), self.started, self.summary, self.dir, self.log
        )  # never raises: a trend is not worth a failed run
        self.log.info("summary: %s", self.dir / "summary.json")

    def _tell(self) -> None:
        """Emit the benchmark's regression verdict as a Prefect event (an Automation notifies on it);
        name the run's page in the UI, when there is one to open."""
        regression = getattr(self.benchmark, "regression", None)
        if regression is not None and regression.status == "regressed":
            emit_regression(regression, self.dir)
        page = run_page()
        if page:
            self.log.info("run page: %s", page)

    def interruption_line(self) -> str:
        """One line: what stopped the run, during which stage, and what was stopped."""
        stages = [r.name for r in self.stages.records.values() if r.status == "interrupted" and r.name != "stop"]
        during = f" during {stages[0]}" if stages else ""
        if self.stopped is not None:
            done = f"TorchServe stopped ({self.stopped.stopped} processes)"
        elif self.server is None:
            done = "no TorchServe was running"
        else:
            done = "TorchServe could NOT be stopped: see the stop stage in the summary"
        return f"interrupted by {self.interrupted}{during}: {done}; summary: {self.dir / 'summary.json'}"


def stop_what_the_run_left(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_cancellation / on_crashed hook: stop a TorchServe whose run was killed before it could.

    For a cancellation through a worker Prefect runs this in the worker, once the run's process has
    exited (after its grace, killed if need be); it stops only servers whose pipeline process is gone.
    """
    from prefect.logging import get_logger

    parameters = flow_run.parameters or {}
    # The run's own runs_dir, read as the run read it: the same parameters, the same function and path rule.
    config, _ = read(parameters.get("config_file"), parameters.get("settings"), parameters.get("overrides"))
    for line in stop_stale(config.runs_dir):
        get_logger("bert-validation").warning("%s (flow run %s, %s)", line, flow_run.name, state.name)


def _api_answers() -> bool:
    """Whether the Prefect API can take artifacts now. The temporary server of a run without
    PREFECT_API_URL shares the terminal's process group, so after a Ctrl-C it is taken as gone."""
    url = PREFECT_API_URL.value()
    if not url:
        return False
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _model_facts(info: ModelInfo | None, checks: ChecksConfig) -> ModelFacts | None:
    """What was served -- the kind the checkpoint decided, its labels and threshold -- what the graphs were compiled
    with and the parity they were held to (casting loosens it)."""
    if info is None:
        return None
    return ModelFacts(
        kind=info.kind,
        class_names=info.class_names,
        threshold=info.threshold,
        backend=info.backend,
        compiler_args=info.compiler_args,
        parity_tolerance=checks.parity_tolerance_for(info.backend, info.compiler_args),
        parity_max_abs_diff=info.parity_max_abs_diff,
    )


def _run_name(run_dir: Path) -> str:
    """This flow run's name (the trend's first column); the run directory's outside one."""
    from prefect import runtime

    return runtime.flow_run.name or run_dir.name


def _server_facts(server: Server) -> KeptServer:
    """Where a kept server is; the key file's path, never a key."""
    return KeptServer(
        inference_url=server.inference_url, management_url=server.management_url, key_file=str(server.key_file)
    )
