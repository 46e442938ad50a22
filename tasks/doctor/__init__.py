"""doctor: the first command on a new host, proving in well under a minute that tonight's run will work.

    python -m flows.doctor [--backend auto|neuron|cuda|cpu] [--instance-type T] [--out DIR]

It walks the night's path at a small shape -- install, Java, the backend and its workers, neuron-ls,
a compile in the compile child, the NeuronCores' release and refusal, archive + TorchServe + register +
one right answer, a killed worker replaced, the accelerator's monitoring tool, stop -- each step pass /
fail / skipped with its time, and on a failure the cause and the fix (tasks/doctor/steps.py). The report
goes to DIR as doctor.md and doctor.json, and to the Prefect API as an artifact where one is configured.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tasks.common.config import RunConfig
from tasks.doctor.report import Report, publish, write
from tasks.doctor.runner import Step, line, run_checks
from tasks.doctor.steps import Doctor


def default_out_dir(runs_dir: Path) -> Path:
    """runs/doctor-<UTC time>: beside the nights' run directories (runs/latest is left to them)."""
    return runs_dir / f"doctor-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def doctor(
    config: RunConfig,
    backend: str | None = None,
    instance_type: str | None = None,
    out_dir: Path | None = None,
    say: Callable[[str], None] = print,
) -> Report:
    """Run every check on this host, write doctor.md and doctor.json to out_dir, publish where a Prefect API
    is configured; `say` gets each step's line as it finishes. Returns the report (ok: no step failed)."""
    out_dir = out_dir or default_out_dir(config.runs_dir)
    started, clock = datetime.now(UTC), time.monotonic()
    checks = Doctor(config, backend, instance_type, out_dir)
    say(f"doctor: {platform.node()}, backend {checks.requested}; report in {out_dir}")
    try:
        outcome = run_checks(checks.checks(), on_step=lambda step: say(line(step)))
    finally:
        checks.close()
    report = Report(
        host=platform.node(),
        backend=checks.backend_name,
        requested_backend=checks.requested,
        started=started.isoformat(timespec="seconds"),
        seconds=round(time.monotonic() - clock, 2),
        ok=outcome.ok,
        interrupted=outcome.interrupted,
        steps=outcome.steps,
    )
    json_file, markdown_file = write(report, out_dir)
    published = publish(report)
    if published:
        say(published)
    say(f"{'ok' if report.ok else 'FAILED'} in {report.seconds:.1f} s: {markdown_file}")
    return report


__all__ = ["Report", "Step", "default_out_dir", "doctor"]
