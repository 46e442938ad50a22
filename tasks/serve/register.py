"""register: the .mar -> a model with batch_size / max_batch_delay / initial_workers, workers READY.

The tutorial's registration broke in two ways this stage handles: the management API now
needs the management token, and registering a name twice answers 409. On a 409 we look at
what is registered: same batching -> scale to the wanted workers; different -> unregister and
register again. Connection errors and 5xx (the server still starting) are retryable; the
Prefect task retries on exactly those (see RegisterError.retryable).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import psutil
from pydantic import BaseModel

from tasks.common.errors import PipelineError
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.common.processes import ProcessRef, tail
from tasks.prepare.archive import Archive
from tasks.serve.server import Server


class RegisterError(PipelineError):
    """Registration failed. `retryable` only for a race (unreachable API, 5xx while starting); a refusal is final."""


class Registration(BaseModel):
    model_name: str
    batch_size: int
    max_batch_delay: int
    workers: int
    action: str  # "registered", "scaled existing", "re-registered"


def register(
    server: Server, archive: Archive, max_batch_delay: int, workers: int, timeout: float = 300.0
) -> Registration:
    """Register the .mar at the batch_size it was traced for, and wait until every worker is READY."""
    batch_size = archive.info.batch_size
    params = {
        "url": archive.mar_file.name,
        "model_name": archive.model_name,
        "batch_size": batch_size,
        "max_batch_delay": max_batch_delay,
        "initial_workers": workers,
        "synchronous": "true",
    }
    if not archive.mar_file.is_file():
        raise RegisterError(f"model archive {archive.mar_file} does not exist", fix="run the archive stage first")
    with server.management(timeout) as client:
        try:
            action = _register(client, params)
            wait_workers_ready(client, archive.model_name, workers, timeout)
        except RegisterError as error:
            if error.retryable:
                raise
            # A refusal is final: give the reader the workers' own account of it.
            raise RegisterError(f"{error.message}\n{model_log_tail(server)}", fix=error.fix) from None
    return Registration(
        model_name=archive.model_name,
        batch_size=batch_size,
        max_batch_delay=max_batch_delay,
        workers=workers,
        action=action,
    )


def _register(client: httpx.Client, params: dict) -> str:
    answer = _call(client, "POST", "/models", params=params)
    if answer.status_code == 409:
        return _reconcile(client, params)
    if answer.status_code != 200:
        raise RegisterError(f"register refused: HTTP {answer.status_code} {answer.text[:500]}")
    return "registered"


def describe(client: httpx.Client, name: str) -> dict:
    answer = _call(client, "GET", f"/models/{name}")
    if answer.status_code != 200:
        raise RegisterError(f"describe {name}: HTTP {answer.status_code} {answer.text[:300]}")
    return answer.json()[0]


def _reconcile(client: httpx.Client, params: dict) -> str:
    """A second registration of the same name: keep it if batching matches, else replace it."""
    name = params["model_name"]
    current = describe(client, name)
    if current.get("batchSize") == params["batch_size"] and current.get("maxBatchDelay") == params["max_batch_delay"]:
        _scale(client, name, params["initial_workers"])
        return "scaled existing"
    before = _worker_processes(current)
    _unregister(client, name, current)
    _wait_exited(before, f"{name}'s old workers", client.timeout.read or 300.0)  # their NeuronCores, first
    again = _call(client, "POST", "/models", params=params)
    if again.status_code != 200:
        raise RegisterError(f"re-registering {name}: HTTP {again.status_code} {again.text[:300]}")
    return "re-registered"


def scale(server: Server, model_name: str, workers: int, timeout: float = 300.0) -> None:
    """Give `model_name` exactly `workers` workers and wait for them: READY when added, their processes
    exited when dropped -- a NeuronCore (or a GPU's memory) is free for another worker only then."""
    with server.management(timeout) as client:
        before = _worker_processes(describe(client, model_name))
        _scale(client, model_name, workers)
        if workers:
            wait_workers_ready(client, model_name, workers, timeout)
        kept = {ref.pid for ref in _worker_processes(describe(client, model_name))}
        _wait_exited([ref for ref in before if ref.pid not in kept], f"{model_name}'s dropped workers", timeout)


def unregister(server: Server, model_name: str, timeout: float = 300.0) -> None:
    """Drop `model_name` from the server, and wait until its workers' processes have exited."""
    with server.management(timeout) as client:
        model = describe(client, model_name)
        workers = _worker_processes(model)  # before they go: a pid that has exited can't be told from a reused one
        _unregister(client, model_name, model)
        _wait_exited(workers, f"{model_name}'s workers", timeout)


def _scale(client: httpx.Client, name: str, workers: int) -> None:
    scaled = _call(
        client, "PUT", f"/models/{name}", params={"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    )
    if scaled.status_code not in (200, 202):
        raise RegisterError(f"scaling {name} to {workers} workers: HTTP {scaled.status_code} {scaled.text[:300]}")


def _unregister(client: httpx.Client, name: str, model: dict) -> None:
    dropped = _call(client, "DELETE", f"/models/{name}/{model.get('modelVersion', '1.0')}")
    if dropped.status_code != 200:
        raise RegisterError(f"unregistering {name}: HTTP {dropped.status_code} {dropped.text[:300]}")


def _worker_processes(model: dict) -> list[ProcessRef]:
    """The running processes of a described model's workers."""
    refs = []
    for worker in model.get("workers", []):
        with contextlib.suppress(psutil.Error, KeyError, TypeError):
            refs.append(ProcessRef.of(psutil.Process(int(worker["pid"]))))
    return refs


def _wait_exited(refs: list[ProcessRef], what: str, timeout: float) -> None:
    def exited() -> bool | Pending:
        alive = [ref.pid for ref in refs if ref.alive()]
        return not alive or Pending(f"pids {alive}")

    try:
        wait_until(exited, timeout, f"{what} exited", most=0.5)
    except TimedOut as late:
        raise RegisterError(
            f"{what} still running after {timeout:g} s ({late.last})",
            fix="TorchServe did not stop them; read its log (server/logs/ts_log.log)",
        ) from None


def wait_workers_ready(client: httpx.Client, name: str, workers: int, timeout: float) -> None:
    def ready() -> bool | Pending:
        states = [worker.get("status", "?") for worker in describe(client, name).get("workers", [])]
        if len(states) >= workers and all(state == "READY" for state in states[:workers]):
            return True
        return Pending(str(states))

    try:
        wait_until(ready, timeout, f"{workers} {name} workers READY", most=1.0)
    except TimedOut as late:
        raise RegisterError(
            f"{name}: workers not READY after {timeout:g} s (states: {late.last})",
            fix="read the workers' log below: a worker that keeps restarting says why there",
        ) from None


def wait_replaced(server: Server, name: str, dead_pid: int, workers: int, timeout: float = 60.0) -> list[int]:
    """After a worker died (a crash, kill -9): wait for TorchServe to have `workers` READY workers again, none of
    them the dead pid; return their pids. TorchServe restarts a dead worker by itself, after its back-off."""

    def replaced() -> list[int] | Pending:
        found = describe_workers(server, name)
        ready = [int(w["pid"]) for w in found if w.get("status") == "READY" and w.get("pid")]
        if len(ready) >= workers and dead_pid not in ready:
            return ready
        return Pending(str([(w.get("pid"), w.get("status")) for w in found]))

    try:
        return wait_until(replaced, timeout, f"worker {dead_pid} of {name} replaced", most=1.0)
    except TimedOut as late:
        raise RegisterError(
            f"{name}: worker {dead_pid} was not replaced by a READY worker within {timeout:g} s "
            f"(workers: {late.last})\n{model_log_tail(server)}",
            fix="read the workers' log above: the replacement says why it could not load",
        ) from None


def describe_workers(server: Server, name: str) -> list[dict]:
    """The model's workers as TorchServe's management API describes them."""
    with server.management() as client:
        return describe(client, name).get("workers", [])


def model_log_tail(server: Server, lines: int = 60) -> str:
    """The workers' own log: where a handler's traceback lands."""
    return tail(server.logs_dir / "model_log.log", lines) or server.log_tail(lines)


def _call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        answer = client.request(method, url, **kwargs)
    except httpx.TransportError as error:
        raise RegisterError(f"management API unreachable ({type(error).__name__}: {error})", retryable=True) from None
    if answer.status_code == 500 and "Failed to start workers" in answer.text:
        # TorchServe already retried the workers itself; their traceback says why they can't load.
        raise RegisterError(
            f"workers could not load the model: {answer.json().get('message')}",
            fix="read the worker traceback below",
            retryable=False,
        )
    if answer.status_code >= 500 and answer.status_code != 507:
        # 5xx while starting is a race, not a verdict; the task's retry condition acts on this.
        raise RegisterError(
            f"management API {method} {url}: HTTP {answer.status_code} {answer.text[:500]}", retryable=True
        )
    return answer
