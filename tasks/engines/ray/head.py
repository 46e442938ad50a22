"""start / stop for Ray Serve: one Ray instance per run, owned from its first process to its last.

start launches head_process.py (the driver that owns the instance: ray.init, then serve.start) in a session of
its own, records it in the server directory's ray.json (no secret in it) and waits until Serve's HTTP proxy
answers; stop ends what the run started, by its recorded processes -- never `ray stop`, which stops every Ray on
the host -- and sweeps whatever is left by the run's marker (MARKER_ENV, in the environment of every process of
this instance and of no other).

Ray's security page warns that anyone who reaches its dashboard or job API can run code on the cluster
(docs.ray.io, "Security"). So, measured on Ray 2.60.0 here (tests/e2e/test_ray_engine.py):
- loopback only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray take the loopback address as the node's
  (ray/_private/services.get_node_ip_address), and Ray's servers bind the node's address, not 0.0.0.0
  (ray-project/ray#55484, #59852); Serve's HTTP proxy binds serving.address. Every listener of the instance
  is on 127.0.0.1 but one per replica: Serve 2.60's inter-deployment gRPC server, which binds [::]:0 with no
  setting to change it (serve/_private/replica.py; ray-project/ray#64544, open) and which the token guards
  (UNAUTHENTICATED without it). The ports Ray would otherwise fix (its dashboard's and autoscaler's metrics)
  are left to the OS, so two runs on one host do not collide.
- the dashboard off (include_dashboard=False: no UI and no job REST API on the head). Ray 2.60's per-node
  dashboard agent still serves Ray's job agent endpoint (/api/job_agent/jobs/) on loopback, and has no switch
  for it: the token guards it (401 without).
- token authentication on: RAY_AUTH_MODE=token with the token in a file of the run's, 0600 (RAY_AUTH_TOKEN_PATH;
  never ~/.ray/auth_token, where Ray would write one of its own). It guards Ray's control plane -- the GCS,
  raylets, dashboard and agents (docs.ray.io, ray-core/internals/token-authentication) -- not Serve's routes:
  the inference token (key_file.json, TorchServe's shape) is checked by the replicas themselves.
- Ray's temp dir (session, logs, sockets) under the run directory, server_dir/ray, inside the server directory
  (0700: Ray makes its own directories 0777), reached through a short link in /tmp: a unix socket's path may not
  pass 107 bytes, and Ray's sockets live in its session directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import httpx
import psutil

from serving.contract import BACKEND_ENV, THREADS_ENV
from tasks.common.child import without_neuron_runtime_settings
from tasks.common.config import ServingConfig
from tasks.common.files import read_record, write_record
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.common.ports import free_ports, owner, port_free
from tasks.common.processes import ProcessRef, Stopped, ctrl_c_deferred, descendants, group_members, kill_group, tail
from tasks.common.processes import stop as stop_processes
from tasks.common.sizing import ResolvedServing
from tasks.common.tools import with_environment_bin
from tasks.engines.installed import RAY_FIX
from tasks.engines.seam import KEY_FILE, Endpoints, EngineError, Started
from tasks.measure.served import FRONTEND, WORKERS

RAY_RECORD = "ray.json"  # in the server directory: what stop (or a later run) needs to find every process
UP_FILE = "ray-up.json"  # written by the head once Ray and Serve are up
REQUEST_FILE = "ray-request.json"
TOKEN_FILE = "ray_token"  # Ray's own token (its control plane), 0600
HEAD_MODULE = "tasks.engines.ray.head_process"
HEAD_LOG = "ray-head.out"
MARKER_ENV = "BERT_RAY_INSTANCE"
LOOPBACK = "127.0.0.1"  # Ray's own servers; Serve's proxy binds serving.address
OBJECT_STORE_BYTES = 256 * 1024**2  # requests are small: Ray's default (30% of memory) would reserve GBs of /dev/shm
METRICS_REPORT_MS = 1000
LOG_TAIL_LINES = 40
# A stop fits inside a Prefect worker's 30 s cancellation grace: SIGTERM to the head and up to STOP_GRACE_S for
# Serve's and Ray's orderly shutdown, then terminate, then kill, STOP_SETTLE_S each: <= 14 s.
STOP_GRACE_S = 10.0
STOP_SETTLE_S = 2.0


class RayStarted(Started):
    """A running Ray instance of this run's, with Serve's HTTP proxy up: what deploy, metrics and stop need."""

    engine: Literal["ray"] = "ray"
    temp_link: Path  # the short path Ray was given as its temp dir: a link to server_dir/ray
    token_file: Path  # Ray's token, for the drivers that deploy (RAY_AUTH_TOKEN_PATH)
    marker: str  # MARKER_ENV's value in this instance's processes
    ports: dict[str, int]  # http (Serve's proxy), metrics (Ray's metrics export)
    gcs_address: str | None = None  # set once the head is up
    # What resolve_serving sized the instance for: what deploy asks of Ray per replica.
    backend: str
    cores: int  # NeuronCores / GPUs (cpu: physical cores)
    replica_limit: int  # the instance's CPUs (cpu) or NeuronCores / GPU shares: no more replicas than that

    @property
    def ray_dir(self) -> Path:
        return ray_dir(self.server_dir)

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['metrics']}/metrics"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.server_dir / "logs" / HEAD_LOG, lines) or f"(no log in {self.server_dir / 'logs'})"


def ray_dir(server_dir: Path) -> Path:
    return Path(server_dir) / "ray"


def require_ray() -> None:
    """Ray is an install extra: say how to add it rather than fail on an import."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise EngineError(
            "Ray Serve is not installed in this environment (the ray engine needs the extra [ray])", fix=RAY_FIX
        )


def write_tokens(server_dir: Path, inference: bool) -> tuple[Path | None, Path]:
    """key_file.json (the inference token, TorchServe's shape) and Ray's own token, each readable by us alone."""
    ray_token = secrets.token_hex(32)
    keys = {"management": {"key": ray_token}}
    if inference:
        keys["inference"] = {"key": secrets.token_urlsafe(24)}
    key_file, token_file = server_dir / KEY_FILE, server_dir / TOKEN_FILE
    for path, text in ((key_file, json.dumps(keys)), (token_file, ray_token)):
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
    return (key_file if inference else None), token_file


def ray_env(token_file: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """What every process that joins this instance needs (the head, and each driver that deploys): Ray's token
    from our file -- an inherited RAY_AUTH_TOKEN would win over it, and RAY_ADDRESS would point elsewhere --
    the loopback address, no usage statistics sent."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")
    }
    return {
        **env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a local instance: the node's address is the loopback one
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def head_env(resolved: ResolvedServing, token_file: Path, marker: str, batch_size: int) -> dict[str, str]:
    """The head's environment, which Ray passes on to every process it starts, the replicas included: no inherited
    NEURON_RT_* (a replica takes the core Ray gives it), this environment's bin on PATH, the threads per replica."""
    return {
        **ray_env(token_file, with_environment_bin(without_neuron_runtime_settings())),
        # One node, nothing to drain to: Ray's default 30 s drain on SIGTERM would not fit Prefect's grace.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "DASHBOARD_METRIC_PORT": "0",
        "AUTOSCALER_METRIC_PORT": "0",
        # Serve's batch-size histogram with a bucket per size up to the traced batch_size (its default buckets are
        # 1, 2, 4, 8...): the batches' sizes are then counted exactly, the fill's distribution with them.
        "RAY_SERVE_BATCH_SIZE_BUCKETS": ",".join(str(size) for size in range(1, batch_size + 1)),
        "OMP_NUM_THREADS": str(resolved.threads_per_worker),
        THREADS_ENV: str(resolved.threads_per_worker),
        BACKEND_ENV: resolved.backend,
        MARKER_ENV: marker,
    }


def pick_http_port(serving: ServingConfig) -> int:
    """Serve's HTTP proxy on serving.inference_port (where TorchServe's inference API would be), checked free;
    or a free one with serving.free_ports."""
    if serving.free_ports:
        return free_ports(serving.address, 1)[0]
    if not port_free(serving.address, serving.inference_port):
        raise EngineError(
            f"port {serving.inference_port} on {serving.address} is already in use{owner(serving.inference_port)}",
            fix="stop what holds it, choose another serving.inference_port, or set serving.free_ports: true",
        )
    return serving.inference_port


def head_request(resolved: ResolvedServing, temp_link: Path, ports: dict[str, int], address: str) -> dict:
    """ray.init's and serve.start's settings: replicas are sized by resolve_serving, as TorchServe's workers."""
    resources = {"neuron_cores": resolved.cores} if resolved.backend == "neuron" else {}
    return {
        "node_address": LOOPBACK,  # Ray's own servers (GCS, raylet, object manager), whatever serving.address says
        "address": address,  # Serve's HTTP proxy: the model's route
        "temp_dir": str(temp_link),
        "num_cpus": resolved.initial_workers,
        "num_gpus": resolved.cores if resolved.backend == "cuda" else 0,
        "resources": resources,
        "object_store_bytes": OBJECT_STORE_BYTES,
        "metrics_port": ports["metrics"],
        "metrics_report_ms": METRICS_REPORT_MS,
        "http_port": ports["http"],
    }


def start(serving: ServingConfig, resolved: ResolvedServing, server_dir: Path, batch_size: int) -> RayStarted:
    """Launch the run's Ray instance in server_dir for a model traced at batch_size, and return once it is
    recorded (not yet up: wait_up)."""
    require_ray()
    logs = server_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ray_dir(server_dir).mkdir(exist_ok=True)
    # Ray makes its temp dir and each directory in it 0777, its own as well (ray/_common/utils.py
    # try_make_directory_shared): the server directory, 0700, is what keeps other users out of its sockets and logs.
    os.chmod(server_dir, 0o700)
    ports = {"http": pick_http_port(serving), "metrics": free_ports(LOOPBACK, 1)[0]}
    temp_link = Path(tempfile.mkdtemp(prefix="ray-")) / "t"
    temp_link.symlink_to(ray_dir(server_dir))
    key_file, token_file = write_tokens(server_dir, serving.token_auth)
    marker = secrets.token_hex(8)
    request_file = server_dir / REQUEST_FILE
    request_file.write_text(json.dumps(head_request(resolved, temp_link, ports, serving.address), indent=2))
    (server_dir / UP_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", HEAD_MODULE, str(request_file), str(server_dir / UP_FILE)]
    # Ctrl-C waits until the head is recorded in ray.json, so stop can always find it.
    with open(logs / HEAD_LOG, "ab") as out, ctrl_c_deferred():
        head = subprocess.Popen(
            command,
            cwd=server_dir,
            env=head_env(resolved, token_file, marker, batch_size),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: Ctrl-C in the terminal reaches us, and we stop it in order
            umask=0o077,
        )
        try:
            started = RayStarted(
                server_dir=server_dir,
                endpoints=Endpoints(inference_url=f"http://{serving.address}:{ports['http']}", key_file=key_file),
                owner=ProcessRef.of(psutil.Process()),
                processes=[ProcessRef.of(psutil.Process(head.pid))],
                temp_link=temp_link,
                token_file=token_file,
                marker=marker,
                ports=ports,
                backend=resolved.backend,
                cores=resolved.cores,
                replica_limit=resolved.initial_workers,
            )
            record(started)
        except BaseException:
            kill_group(head.pid)
            raise
    return started


def record(started: RayStarted) -> None:
    write_record(started.server_dir / RAY_RECORD, started)


def load_record(server_dir: Path) -> RayStarted | None:
    return read_record(Path(server_dir) / RAY_RECORD, RayStarted)


def adopt(started: RayStarted) -> None:
    """Record the instance's processes as they appear (the GCS, raylet, agents, Serve's actors, the replicas), so a
    crash of ours cannot orphan them."""
    started.processes.extend(descendants(started.processes))
    record(started)


def wait_up(started: RayStarted, timeout: float) -> float:
    """Wait for the head to say Ray and Serve are up, then for Serve's proxy to answer; fail at once, with the
    head's log, if it exits meanwhile. Returns the seconds waited."""
    began = time.monotonic()
    head = started.processes[0]

    def up() -> dict | Pending:
        if head.alive() is None:
            raise EngineError(
                f"the Ray head exited during start-up\n{started.log_tail()}",
                fix="read the head's log above (and server/ray/session_latest/logs): it says why it stopped",
            )
        up_file = started.server_dir / UP_FILE
        return json.loads(up_file.read_text()) if up_file.is_file() else Pending("Ray starting")

    try:
        answer = wait_until(up, timeout, "Ray and Serve to start", most=0.5)
        started.gcs_address = answer["gcs_address"]
        adopt(started)
        wait_until(lambda: _proxy_answers(started), max(1.0, timeout - (time.monotonic() - began)), "Serve's proxy")
    except TimedOut as late:
        raise EngineError(
            f"Ray Serve did not come up within {timeout:g} s (last: {late.last})\n{started.log_tail()}",
            fix="read the head's log above; raise serving.startup_timeout on a slow host",
        ) from None
    return time.monotonic() - began


def _proxy_answers(started: RayStarted) -> bool | Pending:
    """Serve's proxy is up once it answers /-/healthz at all: 503 "Route table is not populated yet" before a
    deployment, 200 after."""
    try:
        answer = httpx.get(f"{started.inference_url}/-/healthz", timeout=5.0)
    except httpx.TransportError as error:
        return Pending(type(error).__name__)
    return answer.status_code in (200, 503) or Pending(f"HTTP {answer.status_code}")


def marked(marker: str) -> list[ProcessRef]:
    """Every live process that carries this instance's marker in its environment: Ray passes the head's environment
    to all it starts, so this finds each of them, a worker the raylet started after our last look included."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(MARKER_ENV) == marker:
                found.append(ProcessRef.of(process))
        except (psutil.Error, OSError):
            continue  # gone, or another user's
    return found


def processes(started: RayStarted) -> dict[str, list[psutil.Process]]:
    """The instance's live processes by role: its replicas (Ray names a replica's worker ray::ServeReplica...) run
    the model; the rest -- the head, GCS, raylet, Serve's controller and proxy, the agents -- serve it."""
    roles: dict[str, list[psutil.Process]] = {WORKERS: [], FRONTEND: []}
    for ref in {ref.pid: ref for ref in [*started.processes, *marked(started.marker)]}.values():
        process = ref.alive()
        if process is None:
            continue
        try:
            replica = "ServeReplica" in " ".join(process.cmdline()) or "ServeReplica" in process.name()
        except psutil.Error:
            continue
        roles[WORKERS if replica else FRONTEND].append(process)
    return roles


def leftovers(started: RayStarted) -> list[int]:
    """The pids of this instance still running: what must be empty once stop returned."""
    refs = [*started.processes, *group_members(started.processes[0]), *marked(started.marker)]
    return sorted({ref.pid for ref in refs if ref.alive()})


def stop(started: RayStarted, grace: float = STOP_GRACE_S) -> Stopped:
    """SIGTERM to the head (Serve, then Ray, shut down in order), then terminate, then kill whatever of the
    instance is left, found by record, by process group and by marker. grace=0 kills at once (a second Ctrl-C)."""
    adopt(started)
    head_pid = started.processes[0].pid
    result = stop_processes(
        started.processes,
        grace=grace,
        first=lambda alive: [p for p in alive if p.pid == head_pid] or alive,
        settle=STOP_SETTLE_S,
    )
    left = {ref.pid: ref for ref in [*group_members(started.processes[0]), *marked(started.marker)]}
    if left:
        swept = stop_processes(list(left.values()), grace=STOP_SETTLE_S, settle=STOP_SETTLE_S)
        result.stopped += swept.stopped
        result.survivors += swept.survivors
    if result.survivors:
        pids = ",".join(map(str, result.survivors))
        raise EngineError(
            f"Ray processes {result.survivors} survived SIGKILL",
            fix=f"see what holds them: ps -o pid,stat,wchan,cmd -p {pids}",
        )
    for name in (KEY_FILE, TOKEN_FILE, UP_FILE):
        (started.server_dir / name).unlink(missing_ok=True)
    shutil.rmtree(started.temp_link.parent, ignore_errors=True)
    return result


def find_stale(runs_dir: Path) -> list[RayStarted]:
    """Ray instances recorded under runs_dir (runs/<run>/<server dir>/ray.json) whose pipeline process is gone and
    that still run: left by a crashed run. One whose owner is alive belongs to a run in progress: never touched."""
    stale, seen = [], set()
    for record_file in sorted(Path(runs_dir).glob(f"*/*/{RAY_RECORD}")):
        if record_file.resolve() in seen:
            continue  # runs/latest links to a run listed already
        seen.add(record_file.resolve())
        try:
            started = RayStarted.model_validate_json(record_file.read_text())
        except ValueError:
            continue
        if started.owner is not None and started.owner.alive() is not None:
            continue
        if leftovers(started):
            stale.append(started)
    return stale


def stop_stale(runs_dir: Path) -> list[str]:
    """Stop what crashed runs left behind; a line per instance for the log."""
    lines = []
    for started in find_stale(runs_dir):
        stop(started)
        lines.append(f"stopped a Ray instance left by a crashed run: {started.server_dir} ({started.inference_url})")
    return lines
