"""The stages as Prefect tasks, and the record of how each one ended.

The work is in tasks/, as plain functions a unit test calls without Prefect; what Prefect adds --
retries, the retry condition, caching -- is orchestration, declared here beside the flows that
use it, so a reader sees a stage's whole policy in one line.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from pydantic import BaseModel

from flows.interrupts import WATCH, Arrival
from tasks.common.config import ServingConfig
from tasks.common.processes import Stopped
from tasks.common.sizing import ResolvedServing
from tasks.engines import registry
from tasks.engines.seam import Deployment, Engine, Package, Replica, Started
from tasks.measure.benchmark import run as benchmark
from tasks.prepare.bring import from_mar, from_traced
from tasks.prepare.trace import TracedModel, trace
from tasks.serve.placement import CoreMap, GpuMap
from tasks.verify.checks import run_checks

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

# In the order a run goes through them; "stop" runs whatever happened before it.
STAGES = ["trace", "archive", "start", "register", "check", "benchmark", "compare-buckets", "stop"]
NIGHT_STAGES = ("trace", "archive")  # once a night, whatever the engines; the others once per engine

# How a run is stopped from outside: Ctrl-C (KeyboardInterrupt), or SIGTERM -- a worker cancelling the
# run, a killed job -- which Prefect's own handler raises as TerminationSignal. These are only the vehicles:
# the record of an interruption is the signal the watch saw (flows/interrupts.py).
INTERRUPTS = (KeyboardInterrupt, TerminationSignal)


def interruption_of(error: BaseException | None, stage: str | None = None, after: str | None = None) -> Arrival | None:
    """The interruption behind an error: the first signal the watch saw -- whatever exception it surfaced as
    (Prefect's task engine turns a Ctrl-C during its set-up into `ValueError: Task run is not set`) -- else
    an interrupt raised where no watch runs (a flow called off the main thread, a test raising one)."""
    if WATCH.sync() is not None:
        return WATCH.first
    if isinstance(error, INTERRUPTS):
        signum = error.signal if isinstance(error, TerminationSignal) else signal.SIGINT
        return Arrival(signum=signum, at=time.monotonic(), wall=time.time(), stage=stage, after=after)
    return None


def retry_when_retryable(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry what the stage's error calls a race (connection refused, 5xx while the server starts);
    a refusal such as a 4xx, or a worker that cannot load the model, is a verdict."""
    try:
        state.result()
    except Exception as error:
        return bool(getattr(error, "retryable", False))
    return False


# The seam's steps, as the stages call them: the engine first, then what its step takes (tasks/engines/seam.py).
REGISTER_TIMEOUT_S = 300.0  # deploy: every worker / replica loaded and ready (a cold Neuron load is slow)
READY_TIMEOUT_S = 120.0


def package(engine: Engine[Any], traced: TracedModel, store: Path) -> Package:
    return engine.package(traced, store)


def start(
    engine: Engine[Any], serving: ServingConfig, resolved: ResolvedServing, pkg: Package, server_dir: Path
) -> Started:
    return engine.start(serving, resolved, pkg, server_dir)


def deploy(engine: Engine[Any], started: Started, pkg: Package, max_batch_delay: int, replicas: int) -> Deployment:
    return engine.deploy(started, pkg, max_batch_delay, replicas, REGISTER_TIMEOUT_S)


def ready(engine: Engine[Any], started: Started, deployment: Deployment) -> list[Replica]:
    return engine.ready(started, deployment, READY_TIMEOUT_S)


def core_map(engine: Engine[Any], started: Started, replicas: list[Replica]) -> CoreMap:
    return engine.core_map(started, replicas)


def gpu_map(engine: Engine[Any], started: Started, replicas: list[Replica]) -> GpuMap:
    return engine.gpu_map(started, replicas)


def stop(engine: Engine[Any], started: Started) -> Stopped:
    return engine.stop(started)


# A stage's inputs hold live servers and paths of this run: nothing to cache across runs.
trace_task = task(name="trace", cache_policy=NO_CACHE)(trace)
package_task = task(name="archive", cache_policy=NO_CACHE)(package)
from_traced_task = task(name="bring-traced", cache_policy=NO_CACHE)(from_traced)
from_mar_task = task(name="bring-mar", cache_policy=NO_CACHE)(from_mar)
free_for_tonight_task = task(name="stop-stale", cache_policy=NO_CACHE)(registry.free_for_tonight)
start_task = task(name="start", cache_policy=NO_CACHE)(start)
deploy_task = task(
    name="register",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[2, 5, 10],
    retry_condition_fn=retry_when_retryable,
)(deploy)
ready_task = task(name="wait-ready", cache_policy=NO_CACHE)(ready)
check_task = task(name="check", cache_policy=NO_CACHE)(run_checks)
benchmark_task = task(name="benchmark", cache_policy=NO_CACHE)(benchmark)
compare_buckets_task = task(name="compare-buckets", cache_policy=NO_CACHE)(registry.compare_buckets)
stop_task = task(name="stop", cache_policy=NO_CACHE)(stop)
core_map_task = task(name="core-map", cache_policy=NO_CACHE)(core_map)
gpu_map_task = task(name="gpu-map", cache_policy=NO_CACHE)(gpu_map)


class StageRecord(BaseModel):
    name: str
    status: str = "skipped"  # "ok", "failed", "interrupted", "skipped"
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None  # why a stage was skipped on purpose (--traced, --mar)
    engine: str | None = None  # the engine a server stage ran on; None: the night's own (trace, archive)


class Stages:
    """Times each stage and records how it ended; a failure is recorded, then re-raised. An exception that
    ends a stage after a Ctrl-C or SIGTERM came is the interruption's, whatever its type.

    trace and archive run once a night; the others once per engine, in the order the engines serve: `begin(engine)`
    makes an engine's stages the ones run() records (the first engine's at the start)."""

    def __init__(self, names: list[str] = STAGES, engines: Sequence[str | None] = (None,)):
        self._night = {name: StageRecord(name=name) for name in names if name in NIGHT_STAGES}
        self._engines = {
            engine: {name: StageRecord(name=name, engine=engine) for name in names if name not in NIGHT_STAGES}
            for engine in engines
        }
        self.engine = engines[0]  # whose stages run() records now
        self.current: str | None = None  # the stage running now
        self.last_ended: str | None = None

    @property
    def records(self) -> dict[str, StageRecord]:
        """The night's stages and the current engine's, by name."""
        return {**self._night, **self._engines[self.engine]}

    def begin(self, engine: str | None) -> None:
        self.engine = engine

    def all(self) -> list[StageRecord]:
        """Every record: the night's, then each engine's, in the order they run."""
        return [*self._night.values(), *(record for each in self._engines.values() for record in each.values())]

    @contextlib.contextmanager
    def run(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        record = self.records[name]
        self.current = name
        try:
            yield
            record.status = "ok"
        except BaseException as error:
            # In the run's shielded exit no signal raises: an error there (a stop that failed) is the stage's own.
            interrupted = interruption_of(error, name) if isinstance(error, INTERRUPTS) or not WATCH.shielding else None
            record.status = "interrupted" if interrupted else "failed"
            record.error = f"interrupted by {interrupted.by}" if interrupted else f"{type(error).__name__}: {error}"
            raise
        finally:
            record.seconds = round(time.monotonic() - started, 3)
            self.current, self.last_ended = None, name

    def skip(self, name: str, reason: str) -> None:
        """Skipped on purpose, not after a failure: the summary says why."""
        self.records[name].reason = reason

    def failed(self) -> list[StageRecord]:
        return [r for r in self.all() if r.status == "failed"]

    def as_list(self) -> list[dict]:
        return [r.model_dump() for r in self.all()]


class StageFailed(Exception):
    """Fails the flow run with a message naming the failed stage(s); the summary artifact has the rest."""

    def __init__(self, stages: Stages):
        super().__init__("; ".join(f"stage {r.name} failed: {(r.error or '')[:500]}" for r in stages.failed()))
