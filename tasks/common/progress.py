"""Progress of a long stage, for the people waiting on it: a Prefect progress artifact, one live
terminal line, a few log lines.

A stage (benchmark, compare-buckets) is a list of phases with their planned seconds. The stage's
fraction is the phases done plus the running phase's share, each weighted by its planned seconds;
inside a phase it moves with the clock (never past 95 % of the phase on the clock alone: a phase that
overruns its plan waits at 95 % rather than claiming it is done) or, for a load, with what the load
generator tells its callback (`load()`, loadgen.LoadProgress). It never goes back, and reaches 100 %
when the stage ends well; a failed or interrupted stage leaves it where it stopped, saying so.

  artifact   inside a Prefect flow or task run: one progress artifact per stage (no key: it belongs
             to the run, next to the stage's task run), 0 -> 100 %, its description what is running.
             Updated at most once per `every` s, from a thread of its own with the run's context, so
             a slow or failing API never slows or fails the stage (the first failure is logged once,
             then the artifact is given up). Outside a run (tests, flows/sweep.py): none.
  terminal   when the stream (stderr) is a TTY: one line rewritten in place every `every` s
             (stage, %, elapsed / planned s, what runs; for a load: requests/s, p50/p90 so far,
             errors), cleared at the end. Log records written to the same stream clear it first, so
             a log line never lands after it on the same row. Not a TTY (a worker's log, CI): no line.
  log        for a phase planned `LOGGED_PHASE_S` s or longer (a benchmark's load), a line as it starts
             and at each quarter of it: a handful per stage, never one per second, TTY or not. Shorter
             phases log nothing here (the stages log their results).
"""

from __future__ import annotations

import contextvars
import logging
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

UPDATE_EVERY = 1.0  # s between updates of the terminal line and the artifact
LOGGED_PHASE_S = 20.0  # a phase planned this long logs as it starts and at each quarter
CLOCK_CAP = 0.95  # how far into a phase the clock alone may move the fraction
CLEAR = "\r\x1b[K"  # back to the line's start, erase it
FINAL_WAIT_S = 2.0  # at the end, how long to wait for the artifact's last update


def _wait(event: threading.Event, seconds: float) -> bool:
    """event.wait(seconds): the progress threads' one wait between updates (the unit tests put a fake clock's here)."""
    return event.wait(seconds)


def in_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (where an artifact belongs)."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f} ms"


def describe_load(progress, label: str = "load") -> str:
    """What a running load looks like, in one short line (loadgen.LoadProgress)."""
    if progress.warming_up:
        return f"{label}: warm-up {progress.elapsed:.0f} s"
    figures = (
        f"{progress.requests_per_s:.1f} requests/s, p50 {_ms(progress.p50_ms)}, p90 {_ms(progress.p90_ms)}, "
        f"errors {progress.errors}"
    )
    if progress.done:  # the last answers drained: its time is no longer the measured window's
        return f"{label} done: {figures}"
    if progress.planned is None:  # a count of requests
        return f"{label} {progress.measured_s:.0f} s, {progress.fraction:.0%} of the requests: {figures}"
    duration = progress.planned - (progress.elapsed - progress.measured_s)
    if progress.measured_s < min(1.0, duration / 4):  # the warm-up's answers over an instant: no rate yet
        return f"{label} 0 of {duration:.0f} s: measuring"
    if progress.measured_s >= duration:
        return f"{label} {duration:.0f} s sent, waiting for the last answers: {figures}"
    return f"{label} {progress.measured_s:.0f} of {duration:.0f} s: {figures}"


class _ClearFirst(logging.Filter):
    """On a handler writing to the live line's stream: erase the line before the record is written."""

    def __init__(self, progress: StageProgress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress._erase()
        return True


class StageProgress:
    """One stage's progress (see the module's docstring). Use as a context manager; call `phase(name)`
    as each phase starts and pass `load(label)` to loadgen.load as `on_progress`."""

    def __init__(
        self,
        stage: str,
        phases: dict[str, float],
        log: logging.Logger | logging.LoggerAdapter | None = None,
        stream: TextIO | None = None,
        artifact: bool | None = None,
        every: float = UPDATE_EVERY,
        create: Callable | None = None,
        update: Callable | None = None,
    ):
        self.stage = stage
        self.plan = {name: float(s) for name, s in phases.items() if s > 0}
        self.total = sum(self.plan.values()) or 1.0
        self.log = log or logging.getLogger(__name__)
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.artifact = in_run() if artifact is None else artifact
        self.every = every
        self._create, self._update = create, update  # tests: stand-ins for Prefect's functions
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._publish_now = threading.Event()
        self._threads: list[threading.Thread] = []
        self._guarded: list[logging.Handler] = []
        self._guard = _ClearFirst(self)
        self._shown = False  # the live line is on the terminal
        self._done_before = 0.0  # planned s of the phases already over
        self._phase: str | None = None
        self._started: set[str] = set()
        self._phase_at = 0.0
        self._inner = 0.0  # the running phase's fraction, as its load last told
        self._detail = "starting"
        self._quarter = 0  # quarters of the running phase already logged
        self._last = 0.0  # the fraction last shown: never goes back
        self._ended: str | None = None  # None running; "" done; else why it stopped
        self.start = time.monotonic()
        self.artifact_id: Any = None  # Prefect's id of the progress artifact, once created

    # --- the stage's side ------------------------------------------------------------------------

    def __enter__(self) -> StageProgress:
        self.start = time.monotonic()
        if self.live:
            self._guard_handlers()
            self._spawn(self._draw_loop, "progress-line")
        if self.artifact:
            # The run's context (flow and task run ids, the API's settings) travels into the thread.
            context = contextvars.copy_context()
            self._spawn(lambda: context.run(self._publish_loop), "progress-artifact")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._lock:
            if exc_type is None:
                self._close_phase()
                self._last, self._detail, self._ended = 1.0, "done", ""
            else:
                # Not an Exception: Ctrl-C, SIGTERM (Prefect's TerminationSignal), a cancellation.
                self._ended = "failed" if issubclass(exc_type, Exception) else "interrupted"
        self._stop.set()
        self._publish_now.set()
        # The artifact's last update is worth a moment when the stage ended well; not when interrupted.
        deadline = time.monotonic() + (FINAL_WAIT_S if exc_type is None else 0.5)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._erase()
        for handler in self._guarded:
            handler.removeFilter(self._guard)
        self._guarded.clear()

    def phase(self, name: str, what: str | None = None) -> None:
        """`name` starts now (the phases before it are over), doing `what`."""
        with self._lock:
            self._close_phase()
            self._phase, self._phase_at, self._inner, self._quarter = name, time.monotonic(), 0.0, 0
            self._started.add(name)
            self._detail = what or name
        if self._logged():
            self._log_line()

    def load(self, label: str | None = None) -> Callable:
        """A loadgen on_progress callback: the running phase follows the load; quick, never raises."""

        def told(progress) -> None:
            with self._lock:
                self._inner = max(self._inner, min(float(progress.fraction), 1.0))
                self._detail = describe_load(progress, label or self._phase or "load")
                quarter = int(self._inner * 4)
                log_it = self._logged() and 0 < quarter < 4 and quarter > self._quarter
                if log_it:
                    self._quarter = quarter
            if log_it:
                self._log_line()

        return told

    @property
    def fraction(self) -> float:
        """0 .. 1 of the stage, by planned seconds; never decreasing."""
        with self._lock:
            if self._ended is not None:
                return self._last
            weight = self.plan.get(self._phase or "", 0.0)
            inner = self._inner
            if weight:
                inner = max(inner, min((time.monotonic() - self._phase_at) / weight, CLOCK_CAP))
            self._last = max(self._last, min((self._done_before + weight * inner) / self.total, 0.99))
            return self._last

    def expected(self) -> float:
        """About how long the stage will take (s): the time so far, plus what is left of the running
        phase's plan and the plans of the phases still to come. It grows when a phase overruns."""
        now = time.monotonic()
        with self._lock:
            left = sum(s for name, s in self.plan.items() if name not in self._started)
            if self._phase is not None:
                left += max(0.0, self.plan.get(self._phase, 0.0) - (now - self._phase_at))
        return now - self.start + left

    def line(self) -> str:
        """The stage at a glance: the live line's text and the artifact's description."""
        elapsed = time.monotonic() - self.start
        percent, expected = self.fraction * 100, self.expected()
        with self._lock:
            detail = self._detail
        return f"{self.stage} {percent:3.0f}%  {elapsed:.0f} s of ~{expected:.0f} s  {detail}"

    # --- inside ----------------------------------------------------------------------------------

    def _logged(self) -> bool:
        return self.plan.get(self._phase or "", 0.0) >= LOGGED_PHASE_S

    def _close_phase(self) -> None:
        if self._phase is not None:
            self._done_before += self.plan.get(self._phase, 0.0)
            self._phase = None

    def _log_line(self) -> None:
        elapsed = time.monotonic() - self.start
        with self._lock:
            detail = self._detail
        self.log.info(
            "%s %5.0f s: %3.0f%% of ~%.0f s, %s", self.stage, elapsed, self.fraction * 100, self.expected(), detail
        )

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.stage}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _guard_handlers(self) -> None:
        """Handlers writing to our stream (Prefect's console handler) erase the line before a record."""
        loggers = [logging.getLogger()] + [
            logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            for handler in logger.handlers:
                if getattr(handler, "stream", None) is self.stream and handler not in self._guarded:
                    handler.addFilter(self._guard)
                    self._guarded.append(handler)

    def _erase(self) -> None:
        with self._lock:
            if self._shown:
                self._write(CLEAR)
                self._shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal: the line was only ever a courtesy
            self.live = False

    def _draw_loop(self) -> None:
        while not _wait(self._stop, self.every):
            text = self.line()
            width = shutil.get_terminal_size((100, 20)).columns
            with self._lock:
                if self._ended is None and self.live:
                    # Never wider than the terminal: a wrapped line cannot be rewritten in place.
                    self._write(CLEAR + text[: max(width - 1, 10)])
                    self._shown = True

    def _publish_loop(self) -> None:
        from tasks.common.prefect_api import API_ERRORS  # Prefect loads in the stage's thread, not at import

        create, update = self._create, self._update
        if create is None or update is None:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            # `_sync=True`: Prefect's dispatch keyword (run it here, in this thread), which its typed signatures
            # leave out -- so the functions are held as plain callables.
            created: Callable[..., Any] = create_progress_artifact
            updated: Callable[..., Any] = update_progress_artifact
            create = create or (lambda **kw: created(**kw, _sync=True))
            update = update or (lambda **kw: updated(**kw, _sync=True))
        sent = None
        while True:
            stopping = self._stop.is_set()
            state = (round(self.fraction * 100, 1), self.line() if self._ended is None else self._final_text())
            if state != sent:
                try:
                    if self.artifact_id is None:
                        self.artifact_id = create(progress=state[0], description=state[1])
                    else:
                        update(artifact_id=self.artifact_id, progress=state[0], description=state[1])
                    sent = state
                except API_ERRORS as error:  # the API is down or refuses: the stage goes on without it
                    self.log.warning(
                        "%s: the progress artifact stops here (%s: %s); the stage goes on",
                        self.stage,
                        type(error).__name__,
                        error,
                    )
                    return
            if stopping:
                return
            _wait(self._publish_now, self.every)
            self._publish_now.clear()

    def _final_text(self) -> str:
        elapsed = time.monotonic() - self.start
        if self._ended == "":
            return f"{self.stage} done in {elapsed:.0f} s (planned ~{self.total:.0f} s)"
        return (
            f"{self.stage} {self._ended} after {elapsed:.0f} s, at {self._last * 100:.0f}%, during "
            f"{self._phase or 'its start'}: {self._detail}"
        )
