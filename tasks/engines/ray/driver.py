"""A short-lived Ray driver that deploys the model on the run's instance: `python -m tasks.engines.ray.driver`.

It runs as a child (tasks/common/child.py), never in the flow's process: joining Ray makes a process a driver,
with threads, sockets and signal handlers of Ray's, for as long as it lives. It connects with the run's token,
deploys the Serve application -- one deployment, ParaphraseReplica, at the route TorchServe's model has,
/predictions/<model name> -- waits until Serve's controller says every replica is RUNNING (each ran its graph in
its constructor) or the deployment failed, and exits; the application lives on in the instance (Serve's
controller is detached from the driver that deployed it).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from tasks.common import child
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.engines.seam import EngineError

NAMESPACE = "bert-serving-validation"


def deploy(request: dict) -> dict:
    import ray
    from ray import serve

    sys.path.insert(0, request["package"])  # the packed serving/, not the checkout's: what the replicas import
    from serving.ray_deployment import ParaphraseReplica

    name = request["model_name"]
    ray.init(address=request["gcs_address"], namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    before = serve.status().applications.get(name)
    wrapped: Any = serve.deployment(ParaphraseReplica)  # a Deployment (Serve's overloads type it as a decorator)
    deployment = wrapped.options(name=name, **request["options"])
    app = deployment.bind(*request["init_args"])
    failed: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=name, route_prefix=f"/predictions/{name}")
        except BaseException as error:  # surfaced by the wait below, with Serve's own account
            failed.append(error)

    began = time.monotonic()
    runner = threading.Thread(target=run, name="serve-run", daemon=True)
    runner.start()
    try:
        replicas = wait_until(
            lambda: _running(serve.status(), name, runner.is_alive(), failed), request["timeout"], f"{name} RUNNING"
        )
    except TimedOut as late:
        raise EngineError(
            f"{name}: replicas not RUNNING after {request['timeout']:g} s (Serve says: {late.last})",
            fix="read the replicas' log (server/ray/session_latest/logs/serve/replica_*.log): a replica that "
            "keeps restarting says why there",
        ) from None
    return {
        "action": "redeployed" if before is not None else "deployed",
        "replicas": replicas,
        "seconds": time.monotonic() - began,
    }


def _value(status: object) -> str:
    return str(getattr(status, "value", status))  # Serve's statuses are str enums


def _running(status: Any, name: str, deploying: bool, failed: list[BaseException]) -> int | Pending:
    """The number of RUNNING replicas once serve.run has returned (it returns when the application runs: an
    earlier deployment's RUNNING is not this one's); Pending with Serve's states until then."""
    app = status.applications.get(name)
    if app is not None and _value(app.status) == "DEPLOY_FAILED":
        raise EngineError(
            f"Ray Serve could not deploy {name}: {app.message}",
            fix="read the replica's traceback above: it says why the model could not load",
        )
    if failed:
        raise EngineError(f"Ray Serve refused {name}: {type(failed[0]).__name__}: {failed[0]}")
    if app is None:
        return Pending("not submitted yet")
    states = {key: {_value(k): n for k, n in value.replica_states.items()} for key, value in app.deployments.items()}
    if not deploying and _value(app.status) == "RUNNING":
        return sum(counts.get("RUNNING", 0) for counts in states.values())
    return Pending(f"{_value(app.status)}: {states}")


if __name__ == "__main__":
    child.main(deploy)
