"""The doctor's runner: checks in order, each timed and reported as pass / fail / skipped.

A check is a plain function that returns what it saw (the step's detail) or raises:
  PipelineError   an expected failure: the message and its fix are reported, no traceback;
  NotApplicable   the check does not apply here (a Neuron check on a CPU host): skipped, saying why;
  anything else   a bug: its traceback is printed and the step fails.
A failed check makes every later check that needs it `skipped`, naming the step it needed (and, when
that one was skipped in turn, what it needed), so a reader sees the first cause, not a cascade. A
check marked `always` (stop) runs whatever happened before it -- also after a Ctrl-C, which fails the
step it interrupted and skips the rest.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from tasks.common.errors import PipelineError

BUG_FIX = "an unexpected error, not a known failure: its traceback is printed above; report it with the traceback"


class NotApplicable(Exception):
    """The check does not apply on this host (its message says why): skipped, and no failure for what needs it."""


class Step(BaseModel):
    """One check's outcome, as the terminal, doctor.md and doctor.json show it."""

    name: str
    status: Literal["pass", "fail", "skipped"]
    seconds: float = 0.0
    detail: str = ""
    fix: str | None = None


@dataclass
class Check:
    name: str
    run: Callable[[], str]  # returns the detail
    needs: tuple[str, ...] = ()  # checks that must not have failed (or been skipped for a failure)
    always: bool = False  # runs whatever failed before it, and after a Ctrl-C
    fix: str | None = None  # the fix to report when the error carries none


@dataclass
class Outcome:
    steps: list[Step]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(step.status != "fail" for step in self.steps)


def run_checks(checks: list[Check], on_step: Callable[[Step], None] = lambda step: None) -> Outcome:
    """Run the checks in order; on_step is told of each as it finishes."""
    outcome = Outcome(steps=[])
    failed_first: dict[str, str] = {}  # a failed or skipped-for-a-failure step -> the failed step behind it
    for check in checks:
        reason = _why_skipped(check, failed_first, outcome.interrupted)
        if reason is not None:
            step = Step(name=check.name, status="skipped", detail=reason)
        else:
            step, interrupted = _run_one(check)
            outcome.interrupted = outcome.interrupted or interrupted
        if step.status == "fail":
            failed_first[step.name] = step.name
        elif reason is not None:
            need = next((name for name in check.needs if name in failed_first), None)
            if need is not None:
                failed_first[step.name] = failed_first[need]
        outcome.steps.append(step)
        on_step(step)
    return outcome


def _why_skipped(check: Check, failed_first: dict[str, str], interrupted: bool) -> str | None:
    """ "needs java, which failed", or "needs serve, which was skipped: java failed"; None: run it."""
    if check.always:
        return None
    if interrupted:
        return "not run: the doctor was interrupted"
    need = next((name for name in check.needs if name in failed_first), None)
    if need is None:
        return None
    cause = failed_first[need]
    return f"needs {need}, which failed" if cause == need else f"needs {need}, which was skipped: {cause} failed"


def _run_one(check: Check) -> tuple[Step, bool]:
    """(the step, whether a Ctrl-C interrupted it)."""
    started = time.monotonic()

    def step(status: str, detail: str, fix: str | None = None) -> Step:
        return Step(
            name=check.name, status=status, seconds=round(time.monotonic() - started, 2), detail=detail, fix=fix
        )

    try:
        return step("pass", check.run()), False
    except NotApplicable as reason:
        return step("skipped", str(reason)), False
    except PipelineError as error:
        return step("fail", error.message, error.fix or check.fix), False
    except KeyboardInterrupt:
        return step("fail", "interrupted (Ctrl-C or SIGTERM) while it ran", "run the doctor again"), True
    except Exception as error:  # a bug: say so, with its traceback, and go on to stop what was started
        traceback.print_exc()
        return step("fail", f"{type(error).__name__}: {error}", BUG_FIX), False


def line(step: Step) -> str:
    """The terminal's line for a step: status, name, seconds, the detail's first line; under a failure the
    rest of its message (a log tail, pip's lines) indented, then the fix."""
    first, *rest = step.detail.splitlines() or [""]
    text = f"{step.status:<7} {step.name:<22} {step.seconds:6.1f} s  {first}"
    if step.status == "fail":
        text += "".join(f"\n{'':<8}{more}" for more in rest)
        if step.fix:
            text += f"\n{'':<8}fix: {step.fix}"
    return text
