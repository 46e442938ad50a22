"""deploy / ready for Ray Serve: the package as one Serve deployment, replicas sized as TorchServe's workers.

deploy runs a short-lived driver (driver.py) that deploys ParaphraseReplica at /predictions/<model name> and waits
for Serve's controller to count every replica RUNNING. Each replica asks for what its unit is, and Ray places it
(docs.ray.io, "Accelerator Support"; Serve's deployment guides: resources are declared on the deployment, never
set by hand):
    neuron  neuron_cores: 1 -- Ray gives the replica a NeuronCore of its own and sets NEURON_RT_VISIBLE_CORES
            to it (ray/_private/accelerators/neuron.py), one replica per core as TorchServe's workers
    cuda    num_gpus: GPUs / replicas -- a share of a GPU, as TorchServe hands several workers one gpu_id
    cpu     num_cpus: 1 -- the instance has as many CPUs as replicas (resolve_serving's physical cores), each
            replica threads_per_worker threads
Batching is @serve.batch at the traced batch_size and the run's max_batch_delay (serving/ray_deployment.py).

ready waits until every replica has written its record -- it does so only after running its graph once -- and
the route answers a real pair with the run's token.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil

from tasks.common import child
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.engines.ray.head import MARKER_ENV, RayStarted, adopt, ray_env
from tasks.engines.ray.package import model_dir
from tasks.engines.seam import Deployment, EngineError, Package, Replica
from tasks.serve.cores import claims_dir
from tasks.serve.placement import CoreMap, core_map_of

DRIVER = "tasks.engines.ray.driver"
RECORDS_DIR = "replicas"  # in the server directory: one record per replica that has run its graph
# Requests a replica takes at once (Serve's max_ongoing_requests; its default, 5, is less than one batch of the
# tutorial's 6). Beyond it Serve's router holds requests back and routes them with back-off as replicas report
# room, so they reach a replica one by one and miss the batch forming there: measured at 64 clients, 12 per
# replica kept 1.8 s per request in the router and 3.6 requests per batch, 36 kept 1 ms and 4.9. So as many as
# TorchServe's frontend queues per model by default (job_queue_size 100): the replica is where requests wait.
REPLICA_QUEUE = 100
CONSTRUCTOR_RETRIES = 3  # a replica that cannot load fails the deployment after this many tries, with its traceback
REPLICA_GRACE_S = 2.0  # a stopping replica's wait for its requests in flight
DRIVER_START_S = 60.0  # the driver's own start: import Ray, join the instance
PROBE = ("The company said it expects profit to rise.", "The firm expects its profit to increase.")


def records_dir(server_dir: Path) -> Path:
    return Path(server_dir) / RECORDS_DIR


def replica_options(
    started: RayStarted, batch_size: int, replicas: int, package_dir: Path, queue: int = REPLICA_QUEUE
) -> dict:
    """Serve's options for the deployment: the replicas, what each asks of Ray, its share of requests."""
    if started.backend == "neuron":
        actor: dict = {"num_cpus": 0, "resources": {"neuron_cores": 1}}
    elif started.backend == "cuda":
        actor = {"num_cpus": 0, "num_gpus": started.cores / replicas}
    else:
        actor = {"num_cpus": 1}
    # The packed serving/ first on the replica's path: it imports the code the night packed, not the checkout's.
    python_path = os.pathsep.join(filter(None, [str(package_dir), os.environ.get("PYTHONPATH")]))
    actor["runtime_env"] = {"env_vars": {"PYTHONPATH": python_path}}
    return {
        "num_replicas": replicas,
        "ray_actor_options": actor,
        "max_ongoing_requests": max(queue, 2 * batch_size),  # at least a batch on the model and the next
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        "graceful_shutdown_timeout_s": REPLICA_GRACE_S,
    }


def deploy(
    started: RayStarted,
    package: Package,
    max_batch_delay: int,
    replicas: int,
    timeout: float,
    queue: int = REPLICA_QUEUE,
    admit_when_idle: bool = True,
) -> Deployment:
    """The package deployed at the traced batch_size, max_batch_delay ms and `replicas`, each RUNNING. queue and
    admit_when_idle: how requests wait (REPLICA_QUEUE; serving/ray_deployment.py), for measuring the defaults."""
    if replicas > started.replica_limit:
        raise EngineError(
            f"{replicas} replicas asked, but this instance was started for {started.replica_limit} "
            f"({started.backend}: one per {'NeuronCore' if started.backend == 'neuron' else 'unit'})",
            fix=f"deploy {started.replica_limit} replicas or fewer",
        )
    if started.gcs_address is None:
        raise EngineError("the Ray instance is not up yet", fix="wait for start (wait_up) before deploying")
    key_file = started.endpoints.key_file
    claims = claims_dir(started.server_dir) if started.backend == "neuron" else None
    init_args = [
        str(model_dir(package)),
        str(key_file) if key_file else None,
        max_batch_delay,
        str(records_dir(started.server_dir)),
        str(claims) if claims else None,
        admit_when_idle,
    ]
    request = {
        "gcs_address": started.gcs_address,
        "package": str(package.path),
        "model_name": package.model_name,
        "options": replica_options(started, package.info.batch_size, replicas, package.path, queue),
        "init_args": init_args,
        "timeout": timeout,
    }
    env = ray_env(started.token_file)
    done = child.run(DRIVER, request, EngineError, env=env, timeout=timeout + DRIVER_START_S, known=(EngineError,))
    adopt(started)
    return Deployment(
        model_name=package.model_name,
        batch_size=package.info.batch_size,
        max_batch_delay=max_batch_delay,
        replicas=replicas,
        action=done["action"],
        seconds=done["seconds"],
    )


def live_replicas(started: RayStarted) -> list[Replica]:
    """The replicas of this instance that have run their graph and still run (a replaced one's record is stale)."""
    found = []
    for path in sorted(records_dir(started.server_dir).glob("*.json")):
        try:
            replica = Replica.model_validate_json(path.read_text())
            if psutil.Process(replica.pid).environ().get(MARKER_ENV) == started.marker:
                found.append(replica)
        except (OSError, ValueError, psutil.Error):
            continue
    return found


def _probe(started: RayStarted, model_name: str) -> Pending | None:
    """None once the route answers a real pair with the token; else what it answered."""
    try:
        answer = httpx.post(
            started.endpoints.predictions_url(model_name),
            data={"seq_0": PROBE[0], "seq_1": PROBE[1]},
            headers=started.inference_headers(),
            timeout=30.0,
        )
    except httpx.TransportError as error:
        return Pending(f"route: {type(error).__name__}")
    return None if answer.status_code == 200 else Pending(f"route: HTTP {answer.status_code} {answer.text[:200]}")


def ready(started: RayStarted, deployment: Deployment, timeout: float) -> list[Replica]:
    """Every replica has run its graph (its record) and the route answers a real pair; the replicas, by pid."""

    def answered() -> list[Replica] | Pending:
        found = live_replicas(started)
        if len(found) < deployment.replicas:
            return Pending(f"{len(found)} of {deployment.replicas} replicas have run their graph")
        probed = _probe(started, deployment.model_name)
        return found if probed is None else probed

    try:
        return wait_until(answered, timeout, f"{deployment.replicas} replicas of {deployment.model_name}", most=1.0)
    except TimedOut as late:
        raise EngineError(
            f"{deployment.model_name}: not every replica answers after {timeout:g} s ({late.last})",
            fix="read the replicas' log (server/ray/session_latest/logs/serve/replica_*.log)",
        ) from None


def core_map(started: RayStarted, replicas: list[Replica]) -> CoreMap:
    """Neuron: each replica on a NeuronCore of its own, by the core Ray gave it (recorded as a claim) and by
    neuron-ls."""
    return core_map_of(
        [replica.pid for replica in replicas],
        claims_dir(started.server_dir),
        len(replicas),
        fix="read the replicas' log (server/ray/session_latest/logs/serve/replica_*.log): each says its core",
        who="replicas",
    )
