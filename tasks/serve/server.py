"""start / stop: one TorchServe per run, owned from its first process to its last.

TorchServe >= 0.11 keeps token authorization on (keys in key_file.json, written to the server's
working directory) and the model API off; we keep the first and turn on the second, on the
loopback management address only. Each run gets its own working directory, temp directory
(TorchServe's pid file and worker sockets live there, so two servers on one host don't collide)
and a server.json recording the processes, so stop -- or the next run -- can always find them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from pydantic import BaseModel, SecretStr

from serving.contract import BACKEND_ENV, CORE_CLAIMS_ENV, NEURON_CORES_ENV, THREADS_ENV
from tasks.common.child import without_neuron_runtime_settings
from tasks.common.config import ServingConfig
from tasks.common.errors import PipelineError
from tasks.common.files import read_record, write_record
from tasks.common.polling import Pending, TimedOut, wait_until
from tasks.common.ports import free_ports, owner, port_free
from tasks.common.processes import ProcessRef, Stopped, ctrl_c_deferred, descendants, group_members, kill_group, tail
from tasks.common.processes import stop as stop_processes
from tasks.common.sizing import ResolvedServing
from tasks.common.tools import environment_tool, with_environment_bin
from tasks.serve import cores

SERVER_RECORD = "server.json"
KEY_FILE = "key_file.json"
LOG_TAIL_LINES = 40
# A stop fits well inside a Prefect worker's 30 s cancellation grace: SIGTERM to the frontend and up to
# STOP_GRACE_S for an orderly exit (measured: ~1-3 s), then terminate, then kill, STOP_SETTLE_S each: <= 12 s.
STOP_GRACE_S = 8.0
STOP_SETTLE_S = 2.0


class ServerError(PipelineError):
    """TorchServe could not be started, reached or stopped; the message says why, `fix` what to do."""


class Keys(BaseModel):
    """TorchServe's tokens. SecretStr keeps them out of reprs, logs and artifacts."""

    inference: SecretStr
    management: SecretStr

    def inference_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.inference.get_secret_value()}"}

    def management_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.management.get_secret_value()}"}


class Server(BaseModel):
    """A running TorchServe: where it listens, where its files are, which processes are its."""

    server_dir: Path
    temp_dir: Path
    inference_url: str
    management_url: str
    ports: dict[str, int]
    key_file: Path
    token_auth: bool = True
    owner: ProcessRef | None = None  # the pipeline process that started it
    processes: list[ProcessRef]
    # Left up on purpose (--keep-serving): its owner, the command, exits and the server lives on until
    # `python -m flows.stop` (stop_command); no later run's sweep stops it.
    kept: bool = False

    def credentials(self) -> Keys:
        return read_keys(self.key_file)

    def inference_headers(self) -> dict[str, str]:
        return self.credentials().inference_header() if self.token_auth else {}

    def management_headers(self) -> dict[str, str]:
        return self.credentials().management_header() if self.token_auth else {}

    def management(self, timeout: float = 30.0) -> httpx.Client:
        """A client of the management API, with its token."""
        return httpx.Client(base_url=self.management_url, headers=self.management_headers(), timeout=timeout)

    @property
    def logs_dir(self) -> Path:
        return logs_dir(self.server_dir)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of TorchServe's own log, falling back to the launcher's output."""
        for name in ("ts_log.log", "torchserve.out"):
            found = tail(self.logs_dir / name, lines)
            if found is not None:
                return found
        return f"(no TorchServe log in {self.logs_dir})"


def read_keys(key_file: Path) -> Keys:
    data = json.loads(key_file.read_text())
    return Keys(inference=data["inference"]["key"], management=data["management"]["key"])


def logs_dir(server_dir: Path) -> Path:
    """Where TorchServe writes its logs (ts_log, model_log, access and metrics logs) for a run's server_dir."""
    return server_dir / "logs"


def check_java() -> str:
    """TorchServe's frontend is Java 11+; say so plainly before anything starts."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    fix = "install Java 11 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    if not java or not Path(java).exists():
        raise ServerError("Java is not installed; TorchServe needs Java 11+", fix=fix)
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 11:
        raise ServerError(f"Java {major or '?'} found at {java}; TorchServe needs Java 11+", fix=fix)
    return java


def pick_ports(serving: ServingConfig) -> dict[str, int]:
    """The configured ports, checked free; or free ones picked together when free_ports is set."""
    if serving.free_ports:
        return _free_ports(serving.address, list(serving.ports()))
    for port in serving.ports().values():
        if not port_free(serving.address, port):
            raise ServerError(
                f"port {port} on {serving.address} is already in use{owner(port)}",
                fix="stop what holds it (python -m flows.stop, if it is a kept TorchServe), "
                "choose other ports, or set serving.free_ports: true",
            )
    return serving.ports()


def _free_ports(address: str, names: list[str]) -> dict[str, int]:
    return dict(zip(names, free_ports(address, len(names)), strict=True))


def write_config(
    serving: ServingConfig, ports: dict[str, int], model_store: Path, server_dir: Path, gpus: int = 0
) -> Path:
    host = serving.address
    lines = [
        f"inference_address=http://{host}:{ports['inference']}",
        f"management_address=http://{host}:{ports['management']}",
        f"metrics_address=http://{host}:{ports['metrics']}",
        f"grpc_inference_address={host}",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_address={host}",
        f"grpc_management_port={ports['grpc_management']}",
        f"model_store={model_store}",
        # Only .mar files in this run's model store may be registered.
        # (a regex; backslashes doubled because Java's properties reader drops single ones)
        "allowed_urls=" + f"file://{re.escape(str(model_store))}/.*".replace("\\", "\\\\"),
        "enable_model_api=true",
        f"disable_token_authorization={'false' if serving.token_auth else 'true'}",
        f"default_response_timeout={serving.response_timeout}",
        "install_py_dep_per_model=false",
        # Keep the handler's own metrics (ts_handler_preprocess / _inference / _postprocess from
        # TorchServe's @timed profiling): undeclared model metrics are dropped otherwise.
        "model_metrics_auto_detect=true",
        # GPUs TorchServe may hand to workers: none unless the backend is cuda.
        f"number_of_gpu={gpus}",
    ]
    path = server_dir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(serving: ServingConfig, resolved: ResolvedServing, model_store: Path, server_dir: Path) -> Server:
    """Start TorchServe in the run's server_dir and return once it is up (not yet Healthy)."""
    java = check_java()
    torchserve = environment_tool("torchserve")
    if torchserve is None:
        raise ServerError("torchserve is not installed in this environment", fix="run ./setup.sh")
    if not model_store.is_dir() or not os.access(model_store, os.W_OK):
        raise ServerError(f"model store {model_store} is missing or not writable", fix="check the run directory")
    server_dir.mkdir(parents=True, exist_ok=True)
    logs = logs_dir(server_dir)
    logs.mkdir(exist_ok=True)
    ports = pick_ports(serving)
    if resolved.backend == "neuron":
        cores.ensure_free(resolved.initial_workers)  # before anything starts: busy cores can't be shared
    gpus = resolved.cores if resolved.backend == "cuda" else 0
    config_file = write_config(serving, ports, model_store, server_dir, gpus)
    # A short path of its own: TorchServe's pid file and worker unix sockets (<=108 chars) go here.
    temp_dir = Path(tempfile.mkdtemp(prefix="ts-"))
    env = dict(
        # No inherited NEURON_RT_*: each worker pins its own core (serving/model.py). This environment's
        # bin on PATH, as for the compile child: a worker may run its tools (tasks/common/tools.py).
        with_environment_bin(without_neuron_runtime_settings()),
        TMPDIR=str(temp_dir),
        TEMP=str(temp_dir),
        LOG_LOCATION=str(logs),
        METRICS_LOCATION=str(logs),
        JAVA_HOME=str(Path(java).resolve().parent.parent),
        OMP_NUM_THREADS=str(resolved.threads_per_worker),
        **{THREADS_ENV: str(resolved.threads_per_worker), BACKEND_ENV: resolved.backend},
        **({NEURON_CORES_ENV: str(resolved.cores)} if resolved.backend == "neuron" else {}),
        **({CORE_CLAIMS_ENV: str(cores.claims_dir(server_dir))} if resolved.backend in ("neuron", "cuda") else {}),
    )
    command = [
        torchserve,
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(model_store),
        "--ts-config",
        str(config_file),
    ]
    # Ctrl-C waits until the launcher is recorded in server.json, so stop can always find it; a SIGTERM
    # (Prefect's TerminationSignal) in between kills the launcher's group here.
    with open(logs / "torchserve.out", "ab") as out, ctrl_c_deferred():
        launcher = subprocess.Popen(
            command,
            cwd=server_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: Ctrl-C in the terminal reaches us, and we stop TorchServe in order.
            start_new_session=True,
            # The key file TorchServe writes in its working directory is readable by us alone.
            umask=0o077,
        )
        try:
            server = Server(
                server_dir=server_dir,
                temp_dir=temp_dir,
                inference_url=f"http://{serving.address}:{ports['inference']}",
                management_url=f"http://{serving.address}:{ports['management']}",
                ports=ports,
                key_file=server_dir / KEY_FILE,
                token_auth=serving.token_auth,
                owner=ProcessRef.of(psutil.Process()),
                processes=[ProcessRef.of(psutil.Process(launcher.pid))],
            )
            record(server)
        except BaseException:
            kill_group(launcher.pid)
            raise
    return server


def record(server: Server) -> None:
    """server.json: enough for stop (or a later run) to find every process. No keys in it."""
    write_record(server.server_dir / SERVER_RECORD, server)


def load_record(server_dir: Path) -> Server | None:
    return read_record(server_dir / SERVER_RECORD, Server)


def stop_command(run_dir: Path) -> str:
    """What stops the server a run kept up: its own run directory named, so it holds with any --runs-dir and
    after later runs have moved runs/latest (flows/stop.py is the command)."""
    return f"python -m flows.stop {run_dir}"


def keep(server: Server) -> None:
    """Record that the server stays up on purpose (--keep-serving): the sweep of later runs leaves it."""
    server.kept = True
    record(server)


def _left_running(runs_dir: Path) -> list[Server]:
    """TorchServes recorded under runs_dir whose pipeline process is gone and that still run. A server whose owner
    is still alive belongs to a run in progress and is never among them."""
    found = []
    for record_file in sorted(runs_dir.glob(f"*/server/{SERVER_RECORD}")):
        try:
            server = Server.model_validate_json(record_file.read_text())
        except ValueError:
            continue
        if server.owner is not None and server.owner.alive() is not None:
            continue  # a run in progress
        # A Java whose launcher died is in no record, but still in the launcher's process group.
        if any(ref.alive() for ref in server.processes) or (server.processes and group_members(server.processes[0])):
            found.append(server)
    return found


def find_stale(runs_dir: Path) -> list[Server]:
    """TorchServes left by a crashed run: their pipeline process is gone, they were not kept on purpose."""
    return [server for server in _left_running(runs_dir) if not server.kept]


def find_kept(runs_dir: Path) -> list[Server]:
    """TorchServes a finished run left up on purpose (--keep-serving) that still run."""
    return [server for server in _left_running(runs_dir) if server.kept]


def kept_line(server: Server) -> str:
    run_dir = server.server_dir.parent
    return (
        f"a TorchServe kept serving by --keep-serving is left running: {run_dir} ({server.inference_url}); "
        f"stop it with: {stop_command(run_dir)}"
    )


def stop_stale(runs_dir: Path) -> list[str]:
    """Stop what crashed runs left behind, leave what a run kept up on purpose; return a line per server for the
    log."""
    lines = []
    for server in find_stale(runs_dir):
        stop(server)
        lines.append(f"stopped a TorchServe left by a crashed run: {server.server_dir} ({server.inference_url})")
    return lines + [kept_line(server) for server in find_kept(runs_dir)]


def refuse_kept(runs_dir: Path) -> None:
    """On Neuron a kept server's workers hold NeuronCores until they exit, and the pipeline never stops what a user
    kept: tonight's run stops here, before anything starts, naming it and the command that stops it."""
    kept = find_kept(runs_dir)
    if kept:
        where = "; ".join(f"{server.server_dir.parent} ({server.inference_url})" for server in kept)
        raise ServerError(
            f"a TorchServe kept serving by --keep-serving holds NeuronCores tonight's run needs: {where}",
            fix="stop it first: " + "; ".join(stop_command(server.server_dir.parent) for server in kept),
        )


def free_for_tonight(runs_dir: Path, backend: str, workers: int) -> list[str]:
    """Before tonight's work, in its first stage: stop what crashed nights left serving (stop_stale) -- on Neuron
    their workers still hold the NeuronCores tonight's compile child needs, until a moment after they exit -- and
    on Neuron wait for `workers` cores to be free (a process not ours that holds one is named, before any work).
    A server kept on purpose is left running; on Neuron, where it holds cores, the run is refused (refuse_kept).
    A line per server stopped or left, for the log."""
    if backend == "neuron":
        refuse_kept(runs_dir)
    stopped = stop_stale(runs_dir)
    if backend == "neuron":
        cores.ensure_free(workers)
    return stopped


def wait_healthy(server: Server, timeout: float) -> float:
    """Poll /ping with backoff until Healthy: the ping races start-up, so a refusal is expected at first.

    Fails at once, with TorchServe's log, if TorchServe exits meanwhile. Returns the seconds waited.
    """
    started = time.monotonic()
    deadline = started + timeout

    def healthy() -> bool | Pending:
        if not any(ref.alive() for ref in server.processes):
            raise ServerError(
                f"TorchServe exited during start-up\n{server.log_tail()}",
                fix="read TorchServe's log above: it says why it stopped",
            )
        _adopt_children(server)
        return _ping(server, timeout=min(5.0, max(0.1, deadline - time.monotonic())))

    try:
        wait_until(healthy, timeout, "TorchServe to answer /ping Healthy")
    except TimedOut as late:
        raise ServerError(
            f"TorchServe did not answer /ping Healthy within {timeout:g} s (last: {late.last})\n{server.log_tail()}",
            fix="read TorchServe's log above; raise serving.startup_timeout on a slow host",
        ) from None
    return time.monotonic() - started


def _ping(server: Server, timeout: float) -> bool | Pending:
    if server.token_auth and not server.key_file.is_file():
        return Pending("no key file yet")
    try:
        answer = httpx.get(f"{server.inference_url}/ping", headers=server.inference_headers(), timeout=timeout)
        if answer.status_code == 200 and answer.json().get("status") == "Healthy":
            return True
        return Pending(f"HTTP {answer.status_code}")
    except (httpx.TransportError, json.JSONDecodeError, KeyError, ValueError) as error:
        return Pending(type(error).__name__)


def _adopt_children(server: Server) -> None:
    """Record the Java frontend and any workers as they appear, so a crash of ours can't orphan them."""
    server.processes.extend(descendants(server.processes))
    record(server)


def stop(server: Server, grace: float = STOP_GRACE_S) -> Stopped:
    """Graceful stop (SIGTERM to the frontend), then terminate, then kill whatever of its tree is left.

    Takes at most grace + 2 x STOP_SETTLE_S; grace=0 kills at once (a second Ctrl-C)."""
    _adopt_children(server)
    result = stop_processes(server.processes, grace=grace, first=_frontend_first, settle=STOP_SETTLE_S)
    # The launcher (processes[0]) may have started Java after the tree was read and then died of our
    # SIGTERM: that Java is nobody's descendant now, but still in the launcher's process group.
    orphans = group_members(server.processes[0])
    if orphans:
        swept = stop_processes(orphans, grace=STOP_SETTLE_S, first=_frontend_first, settle=STOP_SETTLE_S)
        result.survivors += swept.survivors
        result.stopped += swept.stopped
    if result.survivors:
        pids = ",".join(map(str, result.survivors))
        raise ServerError(
            f"TorchServe processes {result.survivors} survived SIGKILL",
            fix=f"see what holds them: ps -o pid,stat,wchan,cmd -p {pids}",
        )
    server.key_file.unlink(missing_ok=True)
    shutil.rmtree(server.temp_dir, ignore_errors=True)
    return result


def _frontend_first(alive: list[psutil.Process]) -> list[psutil.Process]:
    """The Java frontend stops its workers and the launcher in order; without it, the launcher."""
    return [p for p in alive if _is_frontend(p)] or alive[:1]


def _is_frontend(process: psutil.Process) -> bool:
    try:
        return "org.pytorch.serve.ModelServer" in " ".join(process.cmdline())
    except psutil.Error:
        return False
