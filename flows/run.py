"""One validation run as a context: whatever happens inside `with Run(...)`, every server it started is stopped,
the summary and artifacts are written, and a failure ends the flow run naming its stage.

    with Run(config, resolved, parameters) as run:
        with run.stage("trace"):
            ...
        for night in run.nights:            # one engine after the other (serving.engines)
            with run.serving(night):        # its server stopped as its stages end
                with run.stage("start"):
                    ...

Interruptions go through Prefect's own machinery, not around it: Ctrl-C raises KeyboardInterrupt, and
SIGTERM -- a worker cancelling the run, a killed job -- raises Prefect's TerminationSignal from the handler
its engine installs (which is how it acknowledges a cancellation). Which exception surfaces, and where, is
luck (flows/interrupts.py); what the run reports is the signal its watch saw. __exit__ runs shielded -- a
further signal is recorded, and kills the server at once, but cuts nothing short -- stops the server, writes
summary.json with status "interrupted" and the stage that was running, publishes the artifacts, and hands
Prefect's engine the signal's own exception: Cancelled for a worker's cancellation, Crashed otherwise. The
watch backs each step up should the main thread not get there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
from prefect import get_run_logger
from prefect.settings import PREFECT_API_URL

from flows.interrupts import WATCH, Arrival
from flows.logs import RunLogFile
from flows.stages import INTERRUPTS, StageFailed, Stages, interruption_of, stop_task
from flows.stop import command as stop_command
from tasks.common.config import RunConfig
from tasks.common.parameters import read
from tasks.common.processes import Stopped
from tasks.common.sizing import ResolvedServing
from tasks.engines.night import EngineNight
from tasks.engines.registry import stop_stale
from tasks.report.events import emit_regression, run_page
from tasks.report.run_summary import Interrupted, KeptServer, ModelFacts, RunSummary, summarize
from tasks.report.side_by_side import EngineColumn, SideBySide, labels_compared
from tasks.report.summary import make_run_dir, next_run_dir, publish_artifacts, publish_run_config
from tasks.serve.server import keep, load_record

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from prefect import Flow
    from prefect.client.schemas.objects import FlowRun, State

    from serving.contract import ModelInfo
    from tasks.common.config import ChecksConfig


class Run:
    """The run directory, each stage's record, each engine's part of the night, and the typed results so far."""

    def __init__(self, config: RunConfig, resolved: ResolvedServing, parameters: dict):
        # parameters: the flow run's, as a reader of the run-config artifact needs them --
        # {"config_file": str, "settings": {name: value, the given ones only}, "overrides": dict | None}
        self.config, self.resolved, self.parameters = config, resolved, parameters
        self.log = get_run_logger()
        self.started = datetime.now(UTC)  # the trend's "started" for this run, as Prefect's for the others
        self.dir = next_run_dir(config.runs_dir)  # made on entry
        self.nights = EngineNight.of(config, self.dir)  # one per engine, in the order they serve
        self.log_file = RunLogFile(self.dir)  # flow.log there, from entry to the end of the exit
        self.stages = Stages(engines=[night.name for night in self.nights])
        # the traced model's facts (compiler arguments, parity) once trace is done
        self.model_info: ModelInfo | None = None
        self.trace_cache: dict | None = None  # the compile cache's verdict: hit or miss, seconds saved
        self.summary: RunSummary | None = None  # summary.json, once written (on the way out)
        self.interrupted: Arrival | None = None  # how the run was stopped from outside, if it was
        self.exiting = False  # the main thread has begun the exit (the watch's backstop then holds back)
        self._stop_lock = threading.Lock()
        self._summary_lock = threading.Lock()

    def stage(self, name: str) -> AbstractContextManager[None]:
        interrupted = WATCH.sync()
        if interrupted is not None:  # interrupted between stages: no stage starts after a signal
            raise interrupted.vehicle()
        return self.stages.run(name)

    @contextlib.contextmanager
    def serving(self, night: EngineNight) -> Iterator[EngineNight]:
        """One engine's stages, start to compare-buckets; its server stopped as they end (the stop stage). A stage
        that fails ends this engine's part: the next engine still serves, and the night fails. An interruption
        goes on up: the run's exit stops what is running, shielded."""
        self.stages.begin(night.name)
        try:
            yield night
        except Exception as error:
            if interruption_of(error) is not None or night is self.nights[-1]:
                raise
            self._stop_engine(night)  # recorded as its stop stage; raises if the server could not be stopped
            self.log.warning("%s: %s; the next engine serves", night.label, type(error).__name__)
            return
        if not self.keep_serving:
            self._stop_engine(night)

    @property
    def reference(self) -> EngineNight:
        """The engine the summary's top-level results are of (tasks/common/config.py reference_engine)."""
        return next(n for n in self.nights if n.name == self.config.serving.reference_engine())

    @property
    def checks(self) -> list:
        """Every engine's checks, in the order they served."""
        return [check for night in self.nights for check in night.checks]

    @property
    def keep_serving(self) -> bool:
        """--keep-serving leaves the server up only for a model that passed its checks (one engine only)."""
        return self.config.keep_serving and self.stages.records["check"].status == "ok"

    def __enter__(self) -> Run:
        # A process that exists for this flow run (a worker's) may be ended by the watch's last backstop.
        from prefect import runtime

        WATCH.install(dedicated=os.environ.get("PREFECT__FLOW_RUN_ID") == str(runtime.flow_run.id))
        with WATCH.shielded():  # the directory made and the watch attached, or neither
            make_run_dir(self.dir)
            self.log_file.attach()
            WATCH.attach(self)
        self.log.info(
            "run directory %s; %s, %d workers x %d threads (%s)",
            self.dir,
            " then ".join(night.label for night in self.nights),
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
        try:
            return self._exit(error)
        finally:
            self.log_file.detach()

    def _exit(self, error: BaseException | None) -> Literal[False]:
        self.exiting = True
        try:
            with WATCH.shielded():
                # Only a signal that came before the exit began interrupts the run: once its stages are over, the
                # stop and the summary finish under the shield and the run's verdict stands (the command line
                # then says the signal came after the run ended).
                self.interrupted = interruption_of(error, *self.running_stage())
                stop_error = self._stop()
                self._report()
                if not self.interrupted:
                    self._tell()
                    self._retain()
        finally:
            WATCH.detach(self)
        if self.interrupted and not self.stages.failed():
            self.log.warning(self.interruption_line())
            if isinstance(error, INTERRUPTS):
                return False  # on to Prefect's engine: Cancelled (a worker's cancellation) or Crashed
            # It surfaced as another exception (Prefect's own, mid-set-up), or as none: the signal's own instead.
            raise self.interrupted.vehicle() from error
        if stop_error is not None:
            raise StageFailed(self.stages) from stop_error
        if isinstance(error, Exception) and self.stages.failed():
            raise StageFailed(self.stages) from error  # the Failed state then names the stage
        if self.stages.failed():  # a failed engine's part, or failed then interrupted while stopping
            raise StageFailed(self.stages)
        kept = self.reference.started
        if self.keep_serving and kept is not None:
            self.log.info(
                "%s kept serving at %s; stop it with: %s",
                self.reference.label,
                kept.inference_url,
                stop_command(self.dir),
            )
        return False

    # -- what the interrupt watch needs (flows/interrupts.Night), callable from its thread -----------------

    def running_stage(self) -> tuple[str | None, str | None]:
        return self.stages.current, self.stages.last_ended

    def stop_now(self, grace: float | None = None) -> None:
        """Stop every server of the run still up, with the plain functions, not the Prefect task (its API may be
        gone); from any thread. grace: s for its orderly exit (None: the engine's own). A stop under way is not
        waited for: a second one with no grace overtakes it (a second Ctrl-C)."""
        if self.keep_serving and not self.interrupted:
            return
        for night in self.nights:
            self._stop_night_now(night, grace)

    def _stop_night_now(self, night: EngineNight, grace: float | None) -> None:
        started = night.recorded()
        if started is None or (night.stopped is not None and not night.stopped.survivors):
            return
        result = night.engine.stop(started, grace=grace)
        with self._stop_lock:
            if night.stopped is None or result.stopped > night.stopped.stopped:
                night.stopped = result

    def write_summary_now(self) -> None:
        """summary.json from what the run knows now, if the main thread has not written it (the watch's backstop)."""
        with self._summary_lock:
            if self.summary:
                return
        self.interrupted = self.interrupted or WATCH.first
        self._write_summary({})

    def end_state_now(self, arrival: Arrival) -> None:
        """The flow run's final state, proposed from here when its engine could not (the watch's last step):
        Cancelled when Prefect asked for the cancellation, else Crashed."""
        from prefect import runtime
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        if runtime.flow_run.id is None:
            return
        message = f"interrupted by {arrival.by} {arrival.during}; ended by its interrupt watch"
        with get_client(sync_client=True, httpx_settings={"timeout": 3}) as client:
            state = client.read_flow_run(runtime.flow_run.id).state
            if state is not None and state.is_final():
                return
            cancelled = state is not None and state.is_cancelling()
            ended: State[Any] = Cancelled(message=message) if cancelled else Crashed(message=message)
            client.set_flow_run_state(runtime.flow_run.id, ended, force=True)

    # -- the exit's steps ---------------------------------------------------------------------------------

    def _stop_engine(self, night: EngineNight) -> None:
        """An engine's stop stage, through the Prefect task (so it shows in the run's graph)."""
        started = night.recorded()
        if started is None:
            return
        self.stages.begin(night.name)
        with self.stages.run("stop"):
            night.stopped = stop_task(night.engine, started)

    def _stop(self) -> BaseException | None:
        """Stop what is still up -- a night that failed, or was interrupted, before its stop stage -- and return
        the stop's error. Interrupted: the plain functions, at once (see stop_now)."""
        if self.keep_serving and not self.interrupted:
            # this command exits, the server stays: no later run's sweep may take it for a crash's
            kept = load_record(self.reference.server_dir)
            if kept is not None:
                keep(kept)
            return None
        left = [night for night in self.nights if night.recorded() is not None and night.stopped is None]
        if not left:
            return None
        if self.interrupted:
            self.log.warning("interrupted by %s: stopping %s", self.interrupted.by, left[0].label)
        try:
            for night in left:
                self.stages.begin(night.name)
                started = night.recorded()
                with self.stages.run("stop"):
                    if self.interrupted:
                        self._stop_night_now(night, grace=0.0 if WATCH.repeated else None)
                    elif started is not None:
                        night.stopped = stop_task(night.engine, started)
        except Exception as error:  # recorded; raised once the summary and artifacts are out
            return error
        return None

    def _report(self) -> None:
        from tasks.common.keys import current_suffix, deployment_name, engine_suffix
        from tasks.report.summary import pictures, publish_side_by_side
        from tasks.report.trend import publish_trend

        drawn = pictures(self.reference.benchmark, self.dir, self.log)  # before the summary: it names them
        summary = self._write_summary(drawn)
        if self.interrupted and not _api_answers():
            self.log.warning(
                "the Prefect API does not answer: artifacts not published; the summary is in %s",
                self.dir / "summary.json",
            )
            return
        base = current_suffix(self.resolved.backend)  # artifact keys per deployment (ad-hoc: per backend)
        name = deployment_name() or base
        try:
            with _best_effort() if self.interrupted else contextlib.nullcontext():
                for night in self.nights:  # each engine's artifacts under its own keys: its history is its own
                    suffix, view = engine_suffix(base, night.name), summary.for_engine(night.name)
                    publish_artifacts(view, night.checks, self.dir, night.buckets, suffix)
                    # never raises: a trend is not worth a failed run
                    publish_trend(
                        engine_suffix(name, night.name),
                        suffix,
                        _run_name(self.dir),
                        self.started,
                        view,
                        self.dir,
                        self.log,
                    )
                first = engine_suffix(base, self.reference.name)
                if summary.side_by_side is not None:
                    publish_side_by_side(summary.side_by_side, first)
                publish_run_config(self.parameters, summary, first)
        except httpx.HTTPError as error:
            if not self.interrupted:
                raise
            self.log.warning(
                "the Prefect API did not take this interrupted run's artifacts (%s); the summary is in %s",
                error,
                self.dir / "summary.json",
            )
            return
        self.log.info("summary: %s", self.dir / "summary.json")

    def _write_summary(self, drawn: dict[str, str]) -> RunSummary:
        first = self.reference
        with self._summary_lock:
            self.summary = summary = summarize(
                self.stages,
                self.checks,
                first.benchmark,
                self.config,
                self.resolved,
                run_dir=self.dir,
                kept_serving=self.keep_serving,
                server=_server_facts(first) if self.keep_serving else None,
                bucket_comparison=first.buckets,
                model=_model_facts(self.model_info, self.config.checks),
                trace=self.trace_cache,
                core_map=first.core_map,
                gpu_map=first.gpu_map,
                pictures=drawn,
                interrupted=self._interrupted() if self.interrupted else None,
                side_by_side=self._side_by_side() if len(self.nights) > 1 else None,
            )
            summary.write(self.dir)
        return summary

    def _side_by_side(self) -> SideBySide:
        """The engines' figures side by side, and the labels each gave the pairs they all answered."""
        columns = []
        for night in self.nights:
            self.stages.begin(night.name)
            records = self.stages.records
            statuses = {records[name].status for name in ("start", "register", "check", "benchmark")}
            status = "failed" if "failed" in statuses or not all(c.passed for c in night.checks) else "ok"
            if records["start"].status == "skipped":
                status = "skipped"
            elif "interrupted" in statuses:
                status = "interrupted"
            columns.append(
                EngineColumn(
                    engine=night.name,
                    status=status,
                    checks_passed=sum(c.passed for c in night.checks),
                    checks=len(night.checks),
                    start_s=records["start"].seconds if records["start"].status == "ok" else None,
                    register_s=records["register"].seconds if records["register"].status == "ok" else None,
                    benchmark=night.benchmark,
                    core_map=night.core_map,
                    gpu_map=night.gpu_map,
                )
            )
        labels = labels_compared([night.checks for night in self.nights], [night.name for night in self.nights])
        return SideBySide(engines=columns, labels=labels)

    def _interrupted(self) -> Interrupted:
        assert self.interrupted is not None
        stage, during = self._where_interrupted()
        return Interrupted(
            by=_cancelled_or(self.interrupted),
            stage=stage,
            during=during,
            stopped=self._stopped(),
            server=self._server_outcome(),
        )

    def _stopped(self) -> Stopped | None:
        """What the stops did, every engine's together; None: no server was stopped."""
        done = [night.stopped for night in self.nights if night.stopped is not None]
        if not done:
            return None
        return Stopped(
            stopped=sum(each.stopped for each in done),
            escalated=[pid for each in done for pid in each.escalated],
            survivors=[pid for each in done for pid in each.survivors],
        )

    def _tell(self) -> None:
        """Emit each engine's regression verdict as a Prefect event (an Automation notifies on it); name the run's
        page in the UI, when there is one to open."""
        for night in self.nights:
            regression = getattr(night.benchmark, "regression", None)
            if regression is not None and regression.status == "regressed":
                emit_regression(regression, self.dir)
        page = run_page()
        if page:
            self.log.info("run page: %s", page)

    def _retain(self) -> None:
        """At the end of the run, its records written: runs_dir pruned and the compile cache bounded
        (tasks/report/retention.py). A disk that refuses costs a warning, never the night's verdict."""
        from tasks.report import retention

        if not self.config.retention.prune:
            return
        try:
            pruned = retention.apply(self.config)
        except OSError as error:
            self.log.warning("retention: not applied: %s: %s", type(error).__name__, error)
            return
        for line in retention.describe(pruned, self.config):
            self.log.info(line)

    def _server_outcome(self) -> str:
        """What became of the servers, in words (the console's interrupted line says this)."""
        said = []
        for night in self.nights:
            if night.stopped is not None and not night.stopped.survivors:
                count = night.stopped.stopped
                said.append(f"{night.label} stopped ({count} process{'' if count == 1 else 'es'})")
            elif night.recorded() is not None:
                said.append(f"{night.label} could NOT be stopped: see the stop stage in the summary")
        return ", ".join(said) or f"no {' or '.join(night.label for night in self.nights)} was running"

    def _where_interrupted(self) -> tuple[str | None, str]:
        """(the stage the interruption stopped, where the run was in words): the stage its record says was
        interrupted -- where the work stopped -- else where the signal found the run."""
        assert self.interrupted is not None
        stopped = [r.name for r in self.stages.all() if r.status == "interrupted" and r.name != "stop"]
        if stopped:
            return stopped[0], f"during {stopped[0]}"
        return self.interrupted.stage, self.interrupted.during

    def interruption_line(self) -> str:
        """One line: what stopped the run, where it was, and what became of the servers."""
        assert self.interrupted is not None
        return (
            f"interrupted by {_cancelled_or(self.interrupted)} {self._where_interrupted()[1]}: "
            f"{self._server_outcome()}; summary: {self.dir / 'summary.json'}"
        )


def _best_effort() -> contextlib.AbstractContextManager[object]:
    """An interrupted run's artifacts, tried once each: its exit is bounded (a worker kills it 30 s after its
    SIGTERM) and its summary.json is on disk already, so a struggling API -- a SQLite database locked by a busy
    host answers 503, which Prefect's client retries with growing waits -- costs no more than one answer each.
    (Measured: 20 s of retries before the exit of a Ctrl-C'd night on a host at load 8.)"""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    return temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0})


def _cancelled_or(arrival: Arrival) -> str:
    """The interruption in words; a SIGTERM that a cancellation in Prefect sent (the flow run is Cancelling)
    says so."""
    if arrival.signum == signal.SIGTERM and _cancelling():
        return "a cancellation in Prefect (SIGTERM from its worker)"
    return arrival.by


def _cancelling() -> bool:
    """Whether this flow run is being cancelled in Prefect (the UI's Cancel, `prefect flow-run cancel`)."""
    from prefect import runtime
    from prefect.client.orchestration import get_client

    if runtime.flow_run.id is None or not PREFECT_API_URL.value():
        return False
    try:
        with get_client(sync_client=True, httpx_settings={"timeout": 2}) as client:
            state = client.read_flow_run(runtime.flow_run.id).state
    except Exception:  # the API gone: the words fall back to the signal's
        return False
    return state is not None and state.is_cancelling()


def stop_what_the_run_left(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """on_cancellation / on_crashed hook: stop a server, of any engine, whose run was killed before it could.

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


def _server_facts(night: EngineNight) -> KeptServer | None:
    """Where a kept server is (TorchServe's: keep_serving is TorchServe's, tasks/common/config.py); the key file's
    path, never a key."""
    started = night.started
    if started is None or started.management_url is None or started.endpoints.key_file is None:
        return None
    return KeptServer(
        inference_url=started.inference_url,
        management_url=started.management_url,
        key_file=str(started.endpoints.key_file),
    )
