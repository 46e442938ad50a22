"""Alerts: when a night fails, crashes, regresses or never runs, someone is told.

Prefect Automations, created (again, idempotently) by `deployments/local.py up` or by hand with
`python deployments/alerts.py` against any server (PREFECT_API_URL):

  bert-validation: run failed or crashed   a flow run of the validation flow ends Failed or Crashed
  bert-validation: benchmark regressed     the flow's event bert-validation.benchmark.regressed
                                           (tasks/report/events.py), whether it warns or fails
  bert-validation: missed night <name>     no Completed run of deployment <name> within 26 h (one per
                                           deployment whose schedule is active: a paused target is silent)

Each sends a notification through one Prefect notification block, CUSTOM_WEBHOOK (a
CustomWebhookNotificationBlock named BLOCK_NAME): a JSON POST {"text", "subject", "body"}, which
Slack and Teams incoming webhooks and any HTTP endpoint accept. The webhook URL is read from the
environment variable WEBHOOK_ENV and stored only in that block, as a secret value (masked when the
block is read back): never in git, logs or artifacts. Any other notification block (email, PagerDuty,
...) works too: pass its name with --block. The message names the deployment, the run, the failed stage
with the first line of its error, and the run's link in the UI.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore as Automation
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.settings import PREFECT_UI_URL

from tasks.report.events import REGRESSED

FLOW = "bert-serving-validation"
BLOCK_NAME = "bert-validation-alerts"
WEBHOOK_ENV = "BERT_VALIDATION_ALERT_WEBHOOK"
MISSED_NIGHT = timedelta(hours=26)  # a nightly run, with two hours' slack
PREFIX = "bert-validation: "

FAILED_SUBJECT = "{{ flow_run.state.name }}: {{ deployment.name if deployment else flow.name }} / {{ flow_run.name }}"
FAILED_BODY = """\
{{ flow_run.state.name }}: a BERT serving validation run did not complete.
deployment: {{ deployment.name if deployment else '(none)' }}
run: {{ flow_run.name }}
stage and error: {{ (flow_run.state.message or 'no message').split('\\n')[0]\
.replace('Flow run encountered an exception: ', '').replace('StageFailed: ', '') }}
link: {{ flow_run|ui_url }}"""

REGRESSED_SUBJECT = "Regressed: {{ event.payload.deployment }} / {{ event.payload.run_name }}"
REGRESSED_BODY = """\
Regressed: the benchmark is slower than earlier nights ({{ event.payload.action }}).
deployment: {{ event.payload.deployment }}
run: {{ event.payload.run_name }}
stage and error: {{ event.payload.stage }}: {{ event.payload.error }}
link: {{ event.payload.ui_url }}"""


def save_webhook(url: str, block_name: str = BLOCK_NAME) -> UUID:
    """The notification block: a JSON POST to `url`, kept as a secret value of the block."""
    block = CustomWebhookNotificationBlock(
        name=block_name,
        url="{{webhook_url}}",
        json_data={"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"},
        secrets={"webhook_url": url},
    )
    saved = block.save(block_name, overwrite=True)
    assert isinstance(saved, UUID)  # called outside an event loop, Prefect's dispatch saves at once
    return saved


def block_id(block_name: str = BLOCK_NAME) -> UUID | None:
    """The saved notification block's id, of whatever notification type; None if there is none."""
    with get_client(sync_client=True) as client:
        for document in client.read_block_documents():
            if document.name == block_name:
                return document.id
    return None


def automations(notify: UUID, missed: dict[str, UUID], missed_after: timedelta = MISSED_NIGHT) -> list[Automation]:
    """The automations; `missed`: deployment name -> id of each deployment a missed night is told for."""
    found = [
        Automation(
            name=PREFIX + "run failed or crashed",
            description="A validation run ended Failed or Crashed.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOW},
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[SendNotification(block_document_id=notify, subject=FAILED_SUBJECT, body=FAILED_BODY)],
        ),
        Automation(
            name=PREFIX + "benchmark regressed",
            description="The benchmark stage found this run slower than earlier nights.",
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                expect={REGRESSED},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[SendNotification(block_document_id=notify, subject=REGRESSED_SUBJECT, body=REGRESSED_BODY)],
        ),
    ]
    ui = PREFECT_UI_URL.value()
    for name, deployment_id in missed.items():
        hours = missed_after.total_seconds() / 3600
        link = f"{ui}/deployments/deployment/{deployment_id}" if ui else f"deployment id {deployment_id}"
        found.append(
            Automation(
                name=PREFIX + f"missed night {name}",
                description=f"No completed run of {name} within {hours:g} h.",
                trigger=EventTrigger(
                    match={"prefect.resource.id": "prefect.flow-run.*"},
                    match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
                    expect={"prefect.flow-run.Completed"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=missed_after,
                ),
                actions=[
                    SendNotification(
                        block_document_id=notify,
                        subject=f"Missed night: {name}",
                        body=f"Missed night: no completed run of deployment {name} within {hours:g} h "
                        f"(no worker, a run stuck Late or Pending, or every run failed).\n"
                        f"deployment: {name}\nrun: (none completed)\nstage and error: (no run completed)\n"
                        f"link: {link}",
                    )
                ],
            )
        )
    return found


def apply(notify: UUID, missed: dict[str, UUID], missed_after: timedelta = MISSED_NIGHT) -> list[str]:
    """Create the automations, replacing earlier ones of the same names (and removing missed-night
    automations of deployments no longer told for). Returns their names."""
    wanted = automations(notify, missed, missed_after)
    names = {a.name for a in wanted}
    with get_client(sync_client=True) as client:
        for existing in client.read_automations():
            if existing.name.startswith(PREFIX) and (existing.name in names or "missed night" in existing.name):
                client.delete_automation(existing.id)
        for automation in wanted:
            client.create_automation(automation)
    return sorted(names)


def set_up(
    missed: dict[str, UUID], block_name: str = BLOCK_NAME, missed_after: timedelta = MISSED_NIGHT
) -> list[str] | None:
    """Save the webhook from WEBHOOK_ENV (if set) and apply the automations through the block; None
    (nothing created) when there is neither a webhook URL nor an existing block to notify through."""
    url = os.environ.get(WEBHOOK_ENV)
    notify = save_webhook(url, block_name) if url else block_id(block_name)
    if notify is None:
        return None
    return apply(notify, missed, missed_after)


def announce(env: dict[str, str], missed: dict[str, UUID]) -> None:
    """set_up against the server `env` names (deployments/local.py up), saying what it did."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        names = set_up(missed)
    if names is None:
        print(f"alerts: off (set {WEBHOOK_ENV} to a webhook URL: Slack, Teams or any POST endpoint)")
    else:
        print(f"alerts: {len(names)} automations notify through block {BLOCK_NAME!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deployments/alerts.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--block",
        default=BLOCK_NAME,
        help=f"notification block to send through (default: %(default)s, created from ${WEBHOOK_ENV})",
    )
    parser.add_argument(
        "--missed-night",
        action="append",
        default=[],
        metavar="FLOW/DEPLOYMENT",
        help="tell when this deployment has no completed run within 26 h (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with get_client(sync_client=True) as client:
        missed = {name.split("/")[-1]: client.read_deployment_by_name(name).id for name in args.missed_night}
    names = set_up(missed, args.block)
    if names is None:
        print(f"error: no notification block {args.block!r}; set {WEBHOOK_ENV} to the webhook URL", file=sys.stderr)
        return 1
    print("\n".join(f"automation: {name}" for name in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
