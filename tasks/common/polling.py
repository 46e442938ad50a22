"""wait_until: poll a check with backoff until it passes, never past the deadline.

Every wait in the pipeline (TorchServe's /ping, workers READY, the local Prefect server's
health) is this one loop. A check returns a truthy value when done; while not done it returns
something falsy, ideally `Pending("what it saw")`, so a timeout can say where things stood.
A check that knows waiting is pointless (the process it waits for exited) raises, and that
error goes straight to the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tasks.common.errors import PipelineError

T = TypeVar("T")


@dataclass(frozen=True)
class Pending:
    """A check's "not yet", carrying what it saw (an HTTP status, worker states) for the timeout message."""

    state: str

    def __bool__(self) -> bool:
        return False


class TimedOut(PipelineError):
    """A wait gave up at its deadline; `what`, `timeout` and `last` let a caller word its own error."""

    def __init__(self, what: str, timeout: float, last: str, fix: str | None = None):
        self.what, self.timeout, self.last = what, timeout, last
        super().__init__(f"gave up waiting for {what} after {timeout:g} s (last seen: {last})", fix)

    def __reduce__(self):
        return (type(self), (self.what, self.timeout, self.last, self.fix))


def wait_until(
    check: Callable[[], T | Pending],
    timeout: float,
    what: str,
    *,
    first: float = 0.2,
    factor: float = 1.5,
    most: float = 2.0,
) -> T:
    """Call `check()` until it returns a truthy value and return that value.

    Sleeps `first`, then `factor` times longer each round up to `most` seconds, but never past
    the deadline: the last check runs at the deadline, then TimedOut names `what`, the timeout
    and the last state seen.
    """
    deadline = time.monotonic() + timeout
    delay = first
    while True:
        result = check()
        if result and not isinstance(result, Pending):  # a Pending is never done
            return result
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(what, timeout, _describe(result))
        time.sleep(min(delay, left))
        delay = min(delay * factor, most)


def _describe(result: object) -> str:
    return result.state if isinstance(result, Pending) else repr(result)
