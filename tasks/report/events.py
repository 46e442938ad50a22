"""Events the flow emits for Prefect Automations to act on (deployments/alerts.py creates them).

bert-validation.benchmark.regressed: the benchmark stage's regression verdict was "regressed"
(whether regression_action warns or fails). Its resource is the flow run; its payload carries what a
notification names: deployment, run name, stage, the first line of the verdict, the run's UI link
(`run_page`: the current UI's route, which Prefect's own runtime.flow_run.ui_url does not build).
"""

from __future__ import annotations

from pathlib import Path

REGRESSED = "bert-validation.benchmark.regressed"


def run_page(flow_run_id=None) -> str | None:
    """The flow run's page in the current UI (`<ui>/runs/flow-run/<id>`), None when no UI URL is known
    (a run on a temporary API server). Prefect 3.8.8's `runtime.flow_run.ui_url` still builds the old
    UI's `/flow-runs/flow-run/<id>`; url_for follows the UI's routes (prefect/utilities/urls.py)."""
    from prefect import runtime
    from prefect.utilities.urls import url_for

    flow_run_id = flow_run_id or runtime.flow_run.id
    if not flow_run_id:
        return None
    return url_for("flow-run", obj_id=flow_run_id) or None


def emit_regression(regression, run_dir: Path) -> None:
    """Emit REGRESSED for this flow run; `regression` is the benchmark's typed verdict (.status, .message)."""
    from prefect import runtime
    from prefect.events import emit_event

    flow_run_id = runtime.flow_run.id
    if not flow_run_id:
        return  # not in a flow run: nothing to attach the event to
    deployment = runtime.deployment.name
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
        "prefect.resource.name": runtime.flow_run.name or "",
    }
    related = []
    if runtime.deployment.id:
        related.append(
            {
                "prefect.resource.id": f"prefect.deployment.{runtime.deployment.id}",
                "prefect.resource.role": "deployment",
                "prefect.resource.name": deployment or "",
            }
        )
    emit_event(
        event=REGRESSED,
        resource=resource,
        related=related,
        payload={
            "deployment": deployment or "(no deployment)",
            "run_name": runtime.flow_run.name,
            "stage": "benchmark",
            "error": (regression.message or regression.status).splitlines()[0][:500],
            "action": regression.action,
            "ui_url": run_page(flow_run_id),
            "run_dir": str(run_dir),
        },
    )
