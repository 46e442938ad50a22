"""The deployments' nightly schedules, on and off through the Prefect API: only targets with a worker on this host
keep theirs, so no Late runs pile up for a worker that never comes (`deployments/local.py up`, `resume`)."""

from __future__ import annotations

from uuid import UUID

from tasks.common.errors import PipelineError


def set_schedules(env: dict[str, str], names: list[str], active: bool) -> dict[str, UUID]:
    """Turn the schedules of the named deployments on or off; return the ids, by short name, of those
    that have a schedule (an on-demand deployment such as smoke-cpu-embedded has none: it is left out,
    so it never gets a missed-night watch)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ids = {}
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                raise PipelineError(
                    f"no deployment {name} on the Prefect server at {env['PREFECT_API_URL']}",
                    fix="deploy first (`prefect deploy --all` from the checkout, with PREFECT_API_URL at that server "
                    "and BERT_VALIDATION_HOME unset), or check the name: prefect.yaml's deployments",
                ) from None
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=active)
            if deployment.schedules:
                ids[name.split("/")[-1]] = deployment.id
    return ids


def schedule_targets(env: dict[str, str], pool: str, by_pool: dict[str, str]) -> dict[str, UUID]:
    """Keep the schedules of the deployments on `pool` (a worker polls it here), pause the others (`by_pool`:
    each deployment's pool), saying how to resume each. Returns the ids, by short name, of the deployments that
    now run on a schedule here: each gets a missed-night watch."""
    here = [name for name, p in by_pool.items() if p == pool]
    absent = [name for name, p in by_pool.items() if p != pool]
    active = set_schedules(env, here, True)
    for name in set_schedules(env, absent, False):
        print(
            f"schedule paused (no worker on this host): {name}; resume: "
            f".venv/bin/python deployments/local.py resume {name}"
        )
    return active
