"""Interrupt small nights at random instants and check each ends clean.

    python -m tools.interrupts --runs 50              # a new seed, printed; --seed S replays a set
    python -m tools.interrupts --runs 5 --how ctrl-c --aim between
    python -m tools.interrupts --runs 20 --engine ray  # Ray Serve's nights (the extra [ray])

Each run is `python -m flows.validate` on a small night (the embedded model at 2 x 32, one worker, a few
seconds of each benchmark step), started as a terminal starts a job: in a process group of its own, SIGINT
at its default. One uninterrupted night first gives the timeline; then each run gets one interruption:

  how   ctrl-c        SIGINT to the process group, as a terminal's Ctrl-C
        ctrl-c-twice  the same, and again 0.5-3 s later (an impatient user)
        sigterm       SIGTERM to the process group, as a Prefect worker's cancel or systemd
        sigterm-pid   SIGTERM to the pipeline's process alone, as `kill PID`
  aim   night         an instant uniform over the reference night's length, counted from this night's run directory
        between       just after a task run ends (0-50 ms after Prefect logs it), where Prefect sets up the next
        startup       an instant uniform over the process's start, before the run directory exists

A run ends clean when: the server (TorchServe, or Ray Serve with --engine ray) is stopped and the summary written
within 20 s of the signal, and the process exits within 30 s; nothing it started is left (the server and its
workers or replicas -- Ray's found by its record, process group and marker too -- compile and ceiling children,
the temporary Prefect server); its summary says "interrupted" with the stage that was running and every
interrupted stage's error names the signal, never a Prefect-internal error -- or, for a signal that came
before the run directory existed or after the run had ended, the console says so (a signal sent once the
command has printed its final status line finds a process already ending: it only has to leave nothing); and
the console's last line says what the summary says of the server; and Prefect never starts a temporary server
of its own (a thread that logs without the run's context). The exit code is the number of runs that
did not end clean.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tasks.common.config import REPO_ROOT
from tasks.common.processes import ProcessRef
from tasks.engines.night import SERVER_DIR
from tasks.engines.registry import engine_named

HOWS = ("ctrl-c", "ctrl-c-twice", "sigterm", "sigterm-pid")
AIMS = ("night", "between", "startup")
EXIT_BOUND_S = 30.0
STOPPED_BOUND_S = 20.0
TASK_ENDED = re.compile(r"Task run '[^']+' - Finished in state")
RUN_STARTED = "run directory "
FINAL_STATUS = re.compile(r"^status: ", re.M)  # the command line's last line for a run that ended by itself
SMALL_NIGHT = [
    "--batch-size", "2", "--max-length", "32", "--workers", "1", "--free-ports",
    "--concurrency", "4", "--duration", "3", "--warmup", "1", "--no-capacity", "--compare-seconds", "1",
]  # fmt: skip


@dataclass
class Timeline:
    """The uninterrupted night's shape: when its run started and how long it took; how many tasks ran."""

    run_started: float
    ended: float
    tasks: int
    cache_hit: bool


@dataclass
class Plan:
    how: str
    aim: str
    at: float = 0.0  # s after the process started (startup), after its run directory appeared (night)
    after_task: int = 0  # the task-run end to fire after (between)
    delay: float = 0.0  # s after that end
    again_after: float = 0.0  # ctrl-c-twice: s between the two


@dataclass
class Outcome:
    plan: Plan
    fired: bool = False
    code: int | None = None
    exit_after: float | None = None  # s from the signal to the exit
    sent_at: float = 0.0  # the signal's wall-clock time (summary.json's mtime is compared with it)
    reported_before: bool = False  # the night had printed its final status line when the signal was sent
    category: str = ""  # interrupted / before the run / after the end / never fired
    stage: str | None = None
    line: str = ""
    left: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def night_command(runs_dir: Path, engine: str = "torchserve") -> list[str]:
    return [sys.executable, "-m", "flows.validate", *SMALL_NIGHT, "--engine", engine, "--runs-dir", str(runs_dir)]


def _start(
    runs_dir: Path, log: Path, env: dict[str, str] | None = None, engine: str = "torchserve"
) -> subprocess.Popen:
    with log.open("wb") as sink:
        return subprocess.Popen(
            night_command(runs_dir, engine),
            cwd=REPO_ROOT,
            # Unbuffered: what the log holds when the signal is sent is what the night had said by then.
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a group of its own, as a terminal's job
            # A background job of a script inherits SIGINT ignored; a terminal's job has it at its default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


class Family:
    """Every process the night started, as seen while it ran (the temporary API server leaves its group)."""

    def __init__(self, root: int):
        self.root = root
        self.seen: dict[int, ProcessRef] = {}

    def look(self) -> None:
        try:
            for child in psutil.Process(self.root).children(recursive=True):
                if child.pid not in self.seen:
                    self.seen[child.pid] = ProcessRef.of(child)
        except psutil.Error:
            pass

    def alive(self) -> list[str]:
        left = []
        for ref in self.seen.values():
            process = ref.alive()
            if process is not None:
                try:
                    left.append(f"{ref.pid} {' '.join(process.cmdline())[:100]}")
                except psutil.Error:
                    pass
        return left


def reference(work: Path, env: dict[str, str] | None = None, engine: str = "torchserve") -> Timeline:
    """One uninterrupted small night with its graph in the compile cache: its timeline. (A first night that
    traced adds the compile to the timeline, which no later night has: it is run again.)"""
    timeline = _reference(work / "reference", work / "reference.log", env, engine)
    if not timeline.cache_hit:
        timeline = _reference(work / "reference-2", work / "reference-2.log", env, engine)
    return timeline


def _reference(runs_dir: Path, log: Path, env: dict[str, str] | None, engine: str) -> Timeline:
    started = time.monotonic()
    process = _start(runs_dir, log, env, engine)
    run_started = None
    while process.poll() is None:
        if run_started is None and RUN_STARTED in log.read_text(errors="replace"):
            run_started = time.monotonic() - started
        time.sleep(0.05)
    ended = time.monotonic() - started
    text = log.read_text(errors="replace")
    if process.returncode != 0 or run_started is None:
        raise SystemExit(f"the reference night failed (exit {process.returncode}):\n{text[-3000:]}")
    return Timeline(
        run_started=run_started, ended=ended, tasks=len(TASK_ENDED.findall(text)), cache_hit="cache hit" in text
    )


def plan(rng: random.Random, timeline: Timeline, hows: list[str], aims: list[str]) -> Plan:
    """One interruption, drawn: how, and when (see the module's docstring)."""
    how, aim = rng.choice(hows), rng.choice(aims)
    chosen = Plan(how=how, aim=aim, again_after=rng.uniform(0.5, 3.0))
    if aim == "night":  # after this night's own run directory appears: its start-up varies more than its night
        chosen.at = rng.uniform(0.0, timeline.ended - timeline.run_started)
    elif aim == "startup":
        chosen.at = rng.uniform(0.0, timeline.run_started)
    else:
        chosen.after_task, chosen.delay = rng.randint(1, max(1, timeline.tasks)), rng.uniform(0.0, 0.05)
    return chosen


def _fire(process: subprocess.Popen, how: str) -> None:
    signum = signal.SIGINT if how.startswith("ctrl-c") else signal.SIGTERM
    if how == "sigterm-pid":
        os.kill(process.pid, signum)
    else:
        os.killpg(process.pid, signum)


def _wait_for_instant(chosen: Plan, process: subprocess.Popen, log: Path, family: Family, started: float) -> bool:
    """Until the planned instant; False if the night ended first."""
    run_started: float | None = None
    while process.poll() is None:
        family.look()
        now = time.monotonic() - started
        said = log.read_text(errors="replace")
        if chosen.aim == "between":
            if len(TASK_ENDED.findall(said)) >= chosen.after_task:
                time.sleep(chosen.delay)
                return process.poll() is None
        elif chosen.aim == "startup":
            if now >= chosen.at:
                return True
        elif run_started is None:
            run_started = now if RUN_STARTED in said else None
        elif now - run_started >= chosen.at:
            return True
        time.sleep(0.005)
    return False


def interrupt(
    chosen: Plan, work: Path, index: int, env: dict[str, str] | None = None, engine: str = "torchserve"
) -> Outcome:
    """One small night on `engine`, interrupted as planned, judged."""
    runs_dir, log = work / f"run-{index}", work / f"run-{index}.log"
    outcome = Outcome(plan=chosen)
    started = time.monotonic()
    process = _start(runs_dir, log, env, engine)
    family = Family(process.pid)
    try:
        outcome.fired = _wait_for_instant(chosen, process, log, family, started)
        if not outcome.fired:
            outcome.category = "never fired: the night ended first"
            process.wait()
            return outcome
        outcome.reported_before = FINAL_STATUS.search(log.read_text(errors="replace")) is not None
        _fire(process, chosen.how)
        sent, outcome.sent_at = time.monotonic(), time.time()
        again = sent + chosen.again_after if chosen.how == "ctrl-c-twice" else None
        while process.poll() is None and time.monotonic() - sent < EXIT_BOUND_S + 30:
            family.look()
            if again is not None and time.monotonic() >= again:
                _fire(process, chosen.how)
                again = None
            time.sleep(0.02)
        outcome.exit_after = time.monotonic() - sent
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        outcome.code = process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    judge(outcome, runs_dir, log.read_text(errors="replace"), family, engine)
    return outcome


def judge(outcome: Outcome, runs_dir: Path, text: str, family: Family, engine_name: str = "torchserve") -> None:
    """What a user would notice, written into outcome.problems (none: clean)."""
    problems = outcome.problems
    if outcome.exit_after is not None and outcome.exit_after > EXIT_BOUND_S:
        problems.append(f"exited {outcome.exit_after:.1f} s after the signal (bound {EXIT_BOUND_S:g} s)")
    lines = [each for each in text.splitlines() if each.startswith("interrupted")]
    outcome.line = lines[-1] if lines else ""
    if "Starting temporary server" in text:  # Prefect's own: something logged or called with no API in its context
        problems.append("Prefect started a temporary server of its own: a thread without the run's context used it")
    run_dirs = [d for d in runs_dir.glob("*") if d.is_dir() and not d.is_symlink()] if runs_dir.is_dir() else []
    engine = engine_named(engine_name)  # type: ignore[arg-type]
    server = engine.recorded(run_dirs[0] / SERVER_DIR) if run_dirs else None
    if server is not None:
        left = engine.leftovers(server)
        if left:
            outcome.left.append(f"{engine.label} {left}")
            engine.stop(server, grace=0)
    deadline = time.monotonic() + 5  # the temporary API server's own exit, after a kill of its parent
    while family.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    outcome.left += family.alive()
    for entry in family.seen.values():
        if entry.alive():
            psutil.Process(entry.pid).kill()
    if outcome.left:
        problems.append(f"left running: {outcome.left}")
    if not run_dirs:
        outcome.category = "before the run"
        if "before the run started" not in outcome.line:
            problems.append(f"no run directory, but the console said: {outcome.line!r}")
        return
    _judge_summary(outcome, run_dirs[0] / "summary.json", server is not None)


def _judge_summary(outcome: Outcome, path: Path, server_started: bool) -> None:
    problems = outcome.problems
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        problems.append(f"no readable summary.json ({type(error).__name__}: {error})")
        return
    told = summary.get("interrupted")
    if told is None:
        outcome.category = f"after the end ({summary['status']})"
        # A signal in the last moments of the process, once it has printed its status, may end it as it likes;
        # one sent before must be obeyed and said.
        if "after the run ended" not in outcome.line and not outcome.reported_before:
            problems.append(f"the run ended {summary['status']}, but the console said: {outcome.line!r}")
        return
    outcome.category, outcome.stage = "interrupted", told.get("stage")
    written = path.stat().st_mtime - outcome.sent_at  # the server is stopped before the summary is written
    if written > STOPPED_BOUND_S:
        problems.append(f"the server stopped and the summary written {written:.1f} s after the signal (bound 20 s)")
    if summary["status"] != "interrupted":
        problems.append(f"summary status {summary['status']!r}, not 'interrupted'")
    for stage in summary["stages"]:
        if stage["status"] == "interrupted" and not (stage["error"] or "").startswith("interrupted by"):
            problems.append(f"stage {stage['name']}'s error is {stage['error']!r}, not the signal")
        if stage["status"] == "failed":
            problems.append(f"stage {stage['name']} failed: {stage['error']}")
    if told["server"] not in outcome.line:
        problems.append(f"the console said {outcome.line!r}; the summary says {told['server']!r}")
    if not server_started and not told["server"].startswith("no "):
        problems.append(f"no server was started, but the summary says {told['server']!r}")


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| # | how | aim | category | stage | exit after signal | code | clean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for index, each in enumerate(outcomes, 1):
        at = (
            f"task {each.plan.after_task} +{each.plan.delay * 1000:.0f} ms"
            if each.plan.aim == "between"
            else (f"{each.plan.at:.1f} s")
        )
        after = "-" if each.exit_after is None else f"{each.exit_after:.1f} s"
        verdict = "yes" if each.clean else "NO: " + "; ".join(each.problems)
        rows.append(
            f"| {index} | {each.plan.how} | {each.plan.aim} {at} | {each.category} | {each.stage or '-'} | {after} "
            f"| {each.code} | {verdict} |"
        )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.interrupts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None, help="replay a set (default: a new one, printed)")
    parser.add_argument("--how", choices=HOWS, action="append", help="default: all, at random")
    parser.add_argument("--aim", choices=AIMS, action="append", help="default: night and between, at random")
    parser.add_argument("--dir", type=Path, default=None, help="where the runs go (default: a temporary one)")
    parser.add_argument("--engine", choices=("torchserve", "ray"), default="torchserve", help="the nights' engine")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    replay = f"python -m tools.interrupts --seed {seed} --runs {args.runs} --engine {args.engine}"
    print(f"seed {seed} (replay: {replay})", flush=True)
    rng = random.Random(seed)
    work = args.dir or Path(tempfile.mkdtemp(prefix="interrupts-"))
    work.mkdir(parents=True, exist_ok=True)  # --dir may name a folder not made yet
    timeline = reference(work, engine=args.engine)
    print(
        f"reference night: run started at {timeline.run_started:.1f} s, ended at {timeline.ended:.1f} s, "
        f"{timeline.tasks} task runs",
        flush=True,
    )
    outcomes = []
    for index in range(1, args.runs + 1):
        chosen = plan(rng, timeline, args.how or list(HOWS), args.aim or ["night", "between"])
        outcomes.append(interrupt(chosen, work, index, engine=args.engine))
        last = outcomes[-1]
        print(f"{index}/{args.runs}: {'clean' if last.clean else 'NOT CLEAN'}: {table([last]).splitlines()[-1]}")
    print(table(outcomes))
    fired = [each for each in outcomes if each.fired]
    bad = [each for each in outcomes if not each.clean]
    print(f"{len(fired) - len([b for b in bad if b.fired])} of {len(fired)} interrupted runs ended clean; seed {seed}")
    print(f"runs and logs: {work}")
    return len(bad)


if __name__ == "__main__":
    sys.exit(main())
