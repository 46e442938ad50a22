"""The doctor's report: doctor.json (the Report model) and doctor.md in its directory, and on a host with a
Prefect API (a fleet host) the markdown as the Prefect artifact `doctor-<host>`, of a flow run `doctor-<host>`
that fails when the doctor did: the fleet's hosts side by side in the UI. A failed publication is a warning:
the files are the record."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from tasks.common.keys import slug
from tasks.doctor.runner import Step

JSON_FILE, MARKDOWN_FILE = "doctor.json", "doctor.md"
SYMBOL = {"pass": "✓ pass", "fail": "✗ FAIL", "skipped": "– skipped"}


class Report(BaseModel):
    host: str
    backend: str  # what the backend step resolved; the requested one when it could not
    requested_backend: str
    started: str  # ISO 8601, UTC
    seconds: float
    ok: bool
    interrupted: bool = False
    steps: list[Step]


def markdown(report: Report) -> str:
    verdict = "ready for tonight's run" if report.ok else "NOT ready: fix the failed steps below"
    lines = [
        f"# Doctor: {report.host} ({report.backend})",
        "",
        f"**{verdict}** — started {report.started}, {report.seconds:.1f} s"
        + (" (interrupted)" if report.interrupted else ""),
        "",
        "| step | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    lines += [f"| {s.name} | {SYMBOL[s.status]} | {s.seconds:.1f} | {_cell(s.detail)} |" for s in report.steps]
    failed = [s for s in report.steps if s.status == "fail"]
    if failed:
        lines += ["", "## Fixes", ""]
        for step in failed:
            lines += [f"### {step.name}", "", "```", step.detail, "```", "", f"fix: {step.fix or '(none known)'}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    """A table cell: one line, pipes escaped; a long message is cut (the Fixes section has it whole)."""
    first = " ".join(text.split())
    first = first if len(first) <= 300 else first[:297] + "..."
    return first.replace("|", "\\|")


def write(report: Report, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_FILE).write_text(report.model_dump_json(indent=2))
    (out_dir / MARKDOWN_FILE).write_text(markdown(report))
    return out_dir / JSON_FILE, out_dir / MARKDOWN_FILE


def artifact_key(host: str) -> str:
    """doctor-<host>, in the letters Prefect allows in a key ([a-z0-9-])."""
    return f"doctor-{slug(host)}"


def publish(report: Report) -> str | None:
    """The markdown as a Prefect artifact when a Prefect API is configured; a line saying what happened (a
    warning when it failed), None when there is no API to publish to."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    key = artifact_key(report.host)
    try:  # asked first with a short timeout: Prefect's own client retries an API that is down for long
        healthy = httpx.get(f"{url.rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        healthy = False
    if not healthy:
        return f"warning: the Prefect API at {url} does not answer; the artifact {key} was not published"
    try:
        state = _report_flow().with_options(flow_run_name=key)(markdown(report), key, report.ok, return_state=True)
    except Exception as error:  # the files are the record: a Prefect API that fails must not fail the doctor
        return f"warning: the Prefect artifact {key} was not published ({type(error).__name__}: {error})"
    return f"published the Prefect artifact {key} (flow run {key}, {state.name})"


def _report_flow():
    """A flow run `doctor-<host>` holding the artifact: Prefect deprecates artifacts outside a run, and a run
    that fails with the doctor lets the fleet's Automations notify on it like on a failed night."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.states import Completed, Failed

    @flow(name="doctor", validate_parameters=False, persist_result=False)
    def doctor_report(text: str, key: str, ok: bool):
        create_markdown_artifact(
            key=key, markdown=text, description=f"python -m flows.doctor: {'ok' if ok else 'failed'}"
        )
        return Completed(message="ready") if ok else Failed(message="not ready: see the artifact " + key)

    return doctor_report
