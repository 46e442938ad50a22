"""A process for tests/unit/test_interrupts.py (`python -m tests.unit.interrupted_night SCENARIO`): a night as the
interrupt watch sees it, with short deadlines. It prints "ready" once watching, then one JSON line per thing that
happens (a vehicle raised, a backstop step called); the test sends the signals. Imports nothing heavy.

    stage      the main thread waits in a stage; the first vehicle ends it
    swallow    the main thread swallows the first vehicle and waits on, as asyncio swallowed a SIGTERM
    stuck      the main thread swallows every vehicle and never ends: the backstop stops, writes and ends it
    shielded   the main thread is in the run's exit, shielded: signals are recorded, never raised
"""

import json
import signal
import sys
import threading
import time
from pathlib import Path

from flows.interrupts import Deadlines, Watch

SHORT = Deadlines(redeliver_every=0.3, stop_after=0.4, summary_after=0.6, exit_after=1.0)


_said = threading.Lock()


def say(**fields) -> None:
    """A line at a time: the watch's backstop steps say theirs from threads of its own."""
    with _said:
        print(json.dumps(fields), flush=True)


class Night:
    """What a run gives the watch; each call said on stdout."""

    def __init__(self) -> None:
        self.dir = Path("/nonexistent")
        self.exiting = False

    def running_stage(self):
        return "benchmark", "check"

    def stop_now(self, grace: float) -> None:
        say(step="stop_now", grace=grace)

    def write_summary_now(self) -> None:
        say(step="summary")

    def end_state_now(self, arrival) -> None:
        say(step="end_state", signum=arrival.signum)


def sigterm_raises(signum, frame):
    """What Prefect's SIGTERM bridge does (prefect.utilities.engine), without importing Prefect."""
    raise SystemExit(f"vehicle {signum}")  # a BaseException as Prefect's TerminationSignal is


def wait_for_vehicle(ready: bool) -> BaseException:
    """Wait (sleeping in short steps, as a stage does work) until an interrupt's exception arrives; say "ready"
    first, inside the wait, so a signal the test sends at once lands in it."""
    try:
        if ready:
            say(ready=True)
        while True:
            time.sleep(0.01)
    except (KeyboardInterrupt, SystemExit) as vehicle:
        return vehicle


def main(scenario: str) -> None:
    signal.signal(signal.SIGTERM, sigterm_raises)
    watch = Watch(SHORT).install(dedicated=scenario == "stuck")
    night = Night()
    watch.attach(night)
    if scenario == "shielded":
        night.exiting = True
        with watch.shielded():
            say(ready=True)
            while len(watch.arrivals) < 2:
                time.sleep(0.01)
            time.sleep(0.2)  # the second signal's kill runs in a thread of the watch's
        say(arrivals=[a.signum for a in watch.arrivals])
        return
    swallowed = 0
    while True:
        vehicle = wait_for_vehicle(ready=swallowed == 0)
        first = watch.sync()
        say(
            vehicle=type(vehicle).__name__,
            arrivals=len(watch.arrivals),
            signum=first.signum if first else None,
            stage=first.stage if first else None,
            threads=threading.active_count(),
        )
        if scenario == "stage" or (scenario == "swallow" and swallowed == 1):
            return
        swallowed += 1


if __name__ == "__main__":
    main(sys.argv[1])
