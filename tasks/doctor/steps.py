"""The doctor's checks on this host, in the order tonight's run meets them.

Each is a short method of Doctor, which holds what the checks hand on (the resolved backend, the traced
model, the server). They call the pipeline's own functions -- detect and size the backend, trace in the
compile child, archive, start, register, the core map, stop -- so a pass here means those functions work
on this host, not a copy of them. The model is tonight's (the config's) at a small shape: batch 1 x 16
tokens, one bucket, never from the compile cache.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from serving.claims import NEURON_CORE_REFUSED
from tasks.common import child, tools
from tasks.common.compiler import BF16_EMULATED_DRIFT, BF16_MARGIN, auto_cast_type
from tasks.common.config import REPO_ROOT, RunConfig, ServingConfig
from tasks.common.errors import PipelineError
from tasks.common.processes import group_members
from tasks.common.sizing import ResolvedServing, resolve_serving
from tasks.common.versions import package_versions
from tasks.doctor.runner import Check, NotApplicable

if TYPE_CHECKING:
    from tasks.measure.telemetry import NeuronMonitor
    from tasks.prepare.archive import Archive
    from tasks.prepare.trace import TracedModel
    from tasks.serve.server import Server

T = TypeVar("T")

# The doctor's small shape: compiles in seconds, and still runs every stage of the night.
BATCH_SIZE, MAX_LENGTH = 1, 16
IMPORTS = {
    "torch": "torch",
    "transformers": "transformers",
    "ts": "torchserve",
    "prefect": "prefect",
    "httpx": "httpx",
    "pydantic": "pydantic",
}  # module -> distribution
TOOLS = ("torchserve", "torch-model-archiver")  # console scripts the night runs from this environment's bin
# torch-neuronx 2.9 is built against GLIBC 2.35: on Amazon Linux 2023 (GLIBC 2.34) it fails to import with
# "version `GLIBC_2.35' not found", and Neuron's answer is Ubuntu 24.04 (aws-neuron-sdk deploy/environments/dlami.rst;
# its PT 2.9 app note). docs/neuron.md, "Running on Inf2 / Trn1".
NEURON_GLIBC = (2, 35)
HOST_FIX = (
    "run the Neuron path on Ubuntu 24.04 (GLIBC 2.39) with Python 3.11 or 3.12: the Deep Learning AMI Neuron "
    "(Ubuntu 24.04) or the Deep Learning Base AMI Neuron (Ubuntu 24.04), not Amazon Linux 2023 (GLIBC 2.34)"
)
SETUP_FIX = "run ./setup.sh (./setup.sh --neuron on a Neuron host): it installs the pinned set into .venv"
MONITOR_WAIT_S = 5.0
REPLACE_TIMEOUT_S = 60.0
REGISTER_TIMEOUT_S = 120.0
HOLDER_START_S = 120.0
# A process that is not ours, holding NeuronCore 0: it loads the graph there and runs it once, as a worker
# does, then waits on stdin. Run with the checkout on PYTHONPATH (serving.contract).
HOLD = (
    "import sys, torch, torch_neuronx; from pathlib import Path; from serving.contract import ModelInfo; "
    "d = Path(sys.argv[1]); info = ModelInfo.read(d); length = info.buckets[0]; "
    "graph = torch.jit.load(str(d / info.model_files[length])); "
    "graph(*[torch.ones(info.batch_size, length, dtype=torch.long)] * (4 if info.kind == 'bi-encoder' else 3)); "
    "print('held', flush=True); sys.stdin.read()"
)


class DoctorError(PipelineError):
    """A check found this host not ready for tonight's run."""


class Doctor:
    """The checks, and what they hand on to each other."""

    def __init__(
        self,
        config: RunConfig,
        backend: str | None = None,
        instance_type: str | None = None,
        out_dir: Path | None = None,
    ):
        self.config = config
        self.requested = backend or config.serving.backend
        self.serving = ServingConfig.model_validate(
            {
                **config.serving.model_dump(),
                "batch_size": BATCH_SIZE,
                "max_length": MAX_LENGTH,
                "length_buckets": None,
                "free_ports": True,
                "backend": self.requested,
                "instance_type": instance_type or config.serving.instance_type,
            }
        )
        self.out_dir = out_dir or Path(tempfile.mkdtemp(prefix="doctor-"))
        # The graphs and the .mar are big and worth nothing after the doctor: a directory of their own, removed.
        self.work = Path(tempfile.mkdtemp(prefix="doctor-work-"))
        self.resolved: ResolvedServing | None = None
        self.traced: TracedModel | None = None
        self.mar: Archive | None = None
        self.server: Server | None = None
        self.cores_were_free = False  # neuron-ls found no holder before the doctor took a core

    def checks(self) -> list[Check]:
        return [
            Check("host", self.host, fix=HOST_FIX),
            Check("install", self.install, fix=SETUP_FIX),
            Check("java", self.java),
            Check("backend", self.backend, needs=("install",)),
            Check("neuron-ls", self.neuron_ls, needs=("backend",)),
            Check(
                "compile",
                self.compile,
                needs=("backend",),
                fix="the message is the compile child's own; on Neuron, compare the torch-neuronx and neuronx-cc "
                "versions (install step) with constraints-neuron.txt",
            ),
            Check("core-released", self.core_released, needs=("neuron-ls", "compile")),
            Check("second-loader-refused", self.second_loader_refused, needs=("neuron-ls", "compile")),
            Check(
                "serve",
                self.serve,
                needs=("java", "compile", "core-released"),
                fix="read TorchServe's logs in the report's server/logs/",
            ),
            Check("worker-replaced", self.worker_replaced, needs=("serve",)),
            Check("telemetry", self.telemetry, needs=("backend",)),
            Check("stop", self.stop, always=True),
        ]

    @property
    def backend_name(self) -> str:
        return self.resolved.backend if self.resolved else self.requested

    # What an earlier check made: a check's needs= ran that one first.
    @property
    def sized(self) -> ResolvedServing:
        return _made(self.resolved, "backend")

    @property
    def compiled(self) -> TracedModel:
        return _made(self.traced, "compile")

    @property
    def archived(self) -> Archive:
        return _made(self.mar, "serve")

    @property
    def started(self) -> Server:
        return _made(self.server, "serve")

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    # --- 1-4: what the run is made of ------------------------------------------------------------------

    def host(self) -> str:
        """The OS, its GLIBC and this Python, named; a host the night cannot run on fails here, first."""
        libc, libc_version = platform.libc_ver()
        seen = (
            f"{_os_name()}; {(libc or 'libc').upper()} {libc_version or 'unknown'}; Python {platform.python_version()}"
        )
        wanted = _requires_python()
        if not wanted.contains(platform.python_version()):
            raise DoctorError(f"{seen}: this project needs Python {wanted}")
        neuron = self.requested == "neuron" or (
            self.requested == "auto" and importlib.util.find_spec("torch_neuronx") is not None
        )
        if neuron and libc == "glibc" and _major_minor(libc_version) < NEURON_GLIBC:
            raise DoctorError(
                f"{seen}: torch-neuronx 2.9 needs GLIBC {'.'.join(map(str, NEURON_GLIBC))} or newer "
                "(it would fail to import: version `GLIBC_2.35' not found)"
            )
        return seen

    def install(self) -> str:
        """The packages import, pip sees no broken requirement, and TorchServe's tools are in the environment."""
        # pip check takes seconds of its own: it runs while the imports are timed.
        pip = subprocess.Popen(
            [sys.executable, "-m", "pip", "check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            _import_all()
            missing = [name for name in TOOLS if tools.environment_tool(name) is None]
            if missing:
                raise DoctorError(f"{', '.join(missing)} not in this environment's bin ({tools.environment_bin()})")
            said, _ = pip.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            raise DoctorError("python -m pip check did not finish within 120 s") from None
        finally:
            if pip.poll() is None:
                pip.kill()
                pip.wait()
        if pip.returncode != 0:
            raise DoctorError("python -m pip check found broken requirements:\n" + said.strip())
        versions = package_versions(*IMPORTS.values(), "torch-model-archiver", "torch-neuronx", "neuronx-cc")
        shown = ", ".join(f"{name} {version}" for name, version in versions.items() if version != "not installed")
        return f"{shown}; pip check: no broken requirements"

    def java(self) -> str:
        from tasks.serve.server import check_java

        return f"Java 11+ at {check_java()}"

    def backend(self) -> str:
        """What `auto` becomes here, and the workers it holds: one per NeuronCore / GPU / physical core."""
        self.resolved = resolve_serving(self.serving)
        r = self.resolved
        count = f"{r.cores} {({'neuron': 'NeuronCores', 'cuda': 'GPUs', 'cpu': 'physical cores'})[r.backend]}"
        device = "" if r.device_name == count else f"{r.device_name}; "
        return (
            f"{r.backend}: {device}{count} (from {r.cores_source}); "
            f"{r.initial_workers} workers x {r.threads_per_worker} threads"
        )

    # --- 4-7: NeuronCores ---------------------------------------------------------------------------

    def _neuron_only(self) -> None:
        if self.backend_name != "neuron":
            raise NotApplicable(f"Neuron only (backend {self.backend_name})")

    def neuron_ls(self) -> str:
        """neuron-ls answers as this user (the workers' user), and no process holds a core the workers need."""
        from tasks.common import backends
        from tasks.serve import cores

        self._neuron_only()
        path = backends.neuron_ls_path()
        if path is None:
            raise DoctorError(
                f"neuron-ls is not on PATH nor in {tools.NEURON_TOOLS_DIR}",
                fix="install aws-neuronx-tools (the Neuron DLAMI has it in /opt/aws/neuron/bin)",
            )
        listing = backends.neuron_ls()
        if listing is None:
            raise DoctorError(
                f"{path} does not answer as user {_user()} (neither --json-output nor -j)",
                fix=f"run {path} --json-output as {_user()}: it needs the Neuron driver loaded "
                "and read access to /dev/neuron*",
            )
        cores.ensure_free(self.sized.initial_workers)
        self.cores_were_free = True
        return f"{listing.source} ({path}): {listing.cores} NeuronCores; no process holds a core the workers need"

    def compile(self) -> str:
        """One small bucket traced in the compile child (on Neuron: neuronx-cc) and held to the run's parity."""
        from tasks.prepare.trace import trace

        model, backend = self.config.model, self.backend_name
        if backend == "neuron":
            _compiler_in_environment()
        tolerance = self.config.checks.parity_tolerance_for(backend, model.compiler_args)
        # Tonight's model and checks at the doctor's small shape, never from the cache: the compiler is what is checked.
        small = self.config.model_copy(update={"serving": self.serving})
        self.traced = trace(small, backend, self.work / "model", use_cache=False)
        info = self.traced.info
        args = f" with {' '.join(info.compiler_args)}" if info.compiler_args else ""
        # Cast to 16 bits, the drift measured here stands beside what the tolerance was derived from: a CPU
        # emulation of the casting (tools/bf16_tolerance.py). Far above it, the emulation missed something.
        emulated = (
            f"; a CPU emulation of this casting drifts up to {BF16_EMULATED_DRIFT:.1e} on the MSR Paraphrase training "
            f"split, x{BF16_MARGIN:g} and rounded up for the tolerance"
            if auto_cast_type(backend, model.compiler_args)
            else ""
        )
        return (
            f"{info.model_name} ({info.kind}, {model.source}) compiled for {backend}{args} in a child process; "
            f"parity max |diff| {info.parity_max_abs_diff:.1e} (tolerance {tolerance:g}{emulated})"
        )

    def core_released(self) -> str:
        """The compile child's NeuronCore is free once it has exited (the driver releases it in its exit path)."""
        from tasks.serve import cores

        self._neuron_only()
        started = time.monotonic()
        cores.ensure_free(self.sized.initial_workers)
        return f"the compile child's NeuronCore was released ({time.monotonic() - started:.1f} s after it exited)"

    def second_loader_refused(self) -> str:
        """A graph loaded on a core another process holds is refused, in words the pipeline recognises (the
        handler retries on them, the ceiling reports itself unavailable), whether torch-neuronx raised them or
        the refusal ended the loader's process (c10::Error, SIGABRT): the detail says which, in the runtime's words."""
        from tasks.measure.ceiling import CeilingError, CeilingUnavailable, measure
        from tasks.verify.pairs import load_golden

        self._neuron_only()
        pairs = [(seq_0, seq_1) for seq_0, seq_1, _ in load_golden(self._golden_file())[:2]]
        holder = _hold_core(self.compiled.model_dir, 0)
        try:
            measure(self.compiled.model_dir, pairs, 1, 1, seconds=0.1, neuron_core=0)
        except CeilingUnavailable as refused:
            said = refused.message
        except CeilingError as failed:  # the loader died, and not in the words of a refusal
            said = failed.message
        else:
            raise DoctorError(
                f"a second process loaded a graph on NeuronCore 0 while pid {holder.pid} held it",
                fix="the runtime shares cores here: serve fewer workers, and report it (docs/neuron.md, "
                "'Who holds the NeuronCores')",
            )
        finally:
            _release(holder)
        if not NEURON_CORE_REFUSED.search(said):
            raise DoctorError(
                f"the second loader failed, but not in words the pipeline recognises: {said}",
                fix="update serving.claims.NEURON_CORE_REFUSED to this runtime's text, or the workers will not "
                "wait for a core being released nor the ceiling report itself unavailable",
            )
        return f"NeuronCore 0, held by pid {holder.pid}, was refused to a second loader: {said}"

    # --- 8-11: TorchServe ---------------------------------------------------------------------------

    def serve(self) -> str:
        """archive -> start -> register (a worker per core on Neuron, on distinct cores) -> one answer right."""
        from tasks.prepare.archive import archive
        from tasks.serve.register import register
        from tasks.serve.server import start, wait_healthy

        self.mar = mar = archive(self.compiled, self.work / "model_store")
        self.server = server = start(self.serving, self.sized, mar.model_store, self.out_dir / "server")
        waited = wait_healthy(server, self.serving.startup_timeout)
        workers = self.sized.initial_workers
        register(server, mar, max_batch_delay=5, workers=workers, timeout=REGISTER_TIMEOUT_S)
        return (
            f"{mar.mar_file.name}; TorchServe Healthy in {waited:.1f} s; {workers} workers READY"
            f"{self._placement()}; {self._answer()}"
        )

    def worker_replaced(self) -> str:
        """A worker killed outright (a crash, the OOM killer) is replaced by TorchServe, which answers again."""
        from tasks.serve.placement import ready_worker_pids
        from tasks.serve.register import wait_replaced

        name, workers, server = self.archived.model_name, self.sized.initial_workers, self.started
        ready = ready_worker_pids(server, name)
        if not ready:
            raise DoctorError(f"{name} has no READY worker to kill", fix="read server/logs/model_log.log")
        started = time.monotonic()
        os.kill(ready[0], signal.SIGKILL)
        new = sorted(set(wait_replaced(server, name, ready[0], workers, timeout=REPLACE_TIMEOUT_S)) - set(ready))
        return (
            f"killed worker pid {ready[0]}; replaced by pid {', '.join(map(str, new)) or '?'} in "
            f"{time.monotonic() - started:.1f} s{self._placement()}; {self._answer()}"
        )

    def telemetry(self) -> str:
        """The accelerator's own tool answers: what the benchmark's telemetry reads during the load."""
        from tasks.measure.telemetry import NeuronMonitor, NvidiaSmi

        backend = self.backend_name
        if backend == "neuron":
            return _neuron_monitor(NeuronMonitor(period=1))
        if backend == "cuda":
            smi = NvidiaSmi()
            smi.start()
            smi.sample()
            result = smi.result()
            if not result.samples:
                raise DoctorError(
                    f"nvidia-smi gave no reading: {result.note}",
                    fix="install the NVIDIA driver's nvidia-smi and put it on the worker's PATH",
                )
            return f"nvidia-smi: {len(result.per_unit_pct)} GPUs, {result.device_memory_used_mib:.0f} MiB in use"
        raise NotApplicable(f"no accelerator tool on {backend}")

    def stop(self) -> str:
        """TorchServe stopped, always: no process of it left and, on Neuron, no core held."""
        from tasks.serve import cores
        from tasks.serve.server import stop

        done = []
        if self.server is not None:
            try:
                stopped = stop(self.server)
            except KeyboardInterrupt:  # a second Ctrl-C: no grace
                stopped = stop(self.server, grace=0)
            left = [ref.pid for ref in self.server.processes if ref.alive()]
            left += [ref.pid for ref in group_members(self.server.processes[0]) if ref.pid not in left]
            if left:
                raise DoctorError(
                    f"TorchServe processes {left} are still running after stop",
                    fix=f"ps -o pid,stat,cmd -p {','.join(map(str, left))}; kill them",
                )
            done.append(f"TorchServe stopped ({stopped.stopped} processes), none left")
        else:
            done.append("no TorchServe was started")
        if self.backend_name == "neuron" and self.cores_were_free:
            cores.ensure_free(self.sized.initial_workers)  # waits for the release of what the doctor ran
            done.append("no process holds a NeuronCore")
        elif self.backend_name == "neuron":
            done.append("NeuronCores not checked: they were not free before the doctor began (see neuron-ls)")
        return "; ".join(done)

    # --- shared by the checks ---------------------------------------------------------------------------

    def _golden_file(self) -> Path:
        return self.config.checks.golden_pairs or REPO_ROOT / "configs" / "golden_pairs.yaml"

    def _placement(self) -> str:
        """Where the workers run: a NeuronCore each (the run's core map), or the GPU each was given."""
        from tasks.serve import placement

        if self.backend_name == "neuron":
            held = placement.core_map(self.started, self.archived.model_name, self.sized.initial_workers).cores
            return "; cores " + ", ".join(f"{core}: pid {pid}" for core, pid in held.items())
        if self.backend_name == "cuda":
            return "; GPUs " + ", ".join(
                f"pid {pid}: {gpu}"
                for pid, gpu in placement.gpu_map(self.started, self.archived.model_name).workers.items()
            )
        return ""

    def _answer(self) -> str:
        """One golden pair, the shortest (it fits 16 tokens), answered right."""
        from tasks.serve.clients import Inference
        from tasks.verify.pairs import load_golden

        pair = min(load_golden(self._golden_file()), key=lambda p: len(p[0]) + len(p[1]))
        inference = Inference(self.started, self.archived.model_name, self.archived.info.class_names)
        try:
            answer = inference.send(*pair)
        finally:
            inference.close()
        if not answer.correct:
            raise DoctorError(
                f"{pair[0]!r} / {pair[1]!r}: expected {answer.expected!r}, got HTTP "
                f"{answer.status_code} {answer.answer!r}",
                fix="read server/logs/model_log.log in the report's directory",
            )
        return f"{pair[0]!r} / {pair[1]!r} -> {answer.answer} ({answer.latency_ms:.0f} ms)"


def _made(value: T | None, check: str) -> T:
    if value is None:
        raise RuntimeError(f"the {check} check has not run")  # a bug: the checks' needs= order them
    return value


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME") or platform.platform()
    except OSError:  # no /etc/os-release
        return platform.platform()


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _requires_python():
    """pyproject's requires-python, as this installed project declares it."""
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(importlib.metadata.metadata("bert-serving-validation")["Requires-Python"] or "")


def _import_all() -> None:
    for module, distribution in IMPORTS.items():
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a package that breaks on import
            raise DoctorError(f"{distribution} does not import: {type(error).__name__}: {error}") from None


def _user() -> str:
    import getpass

    return getpass.getuser()


def _compiler_in_environment() -> None:
    """torch_neuronx runs neuronx-cc by name from PATH; a service's PATH has only this environment's bin."""
    if tools.environment_tool("neuronx-cc") is not None:
        return
    elsewhere = shutil.which("neuronx-cc")
    seen = f" (this shell finds {elsewhere}, which a service's PATH does not)" if elsewhere else ""
    raise DoctorError(
        f"neuronx-cc is not in this environment's bin ({tools.environment_bin()}){seen}",
        fix="./setup.sh --neuron: it installs neuronx-cc from Neuron's package index into .venv",
    )


def _hold_core(model_dir: Path, core: int) -> subprocess.Popen:
    """A process not ours that loaded the graph on `core` and holds it until its stdin closes."""
    # This environment's bin on PATH, as every child that imports torch_neuronx gets it: the import runs
    # libneuronpjrt-path from there (without it, FileNotFoundError, which would read as a busy core).
    env = tools.with_environment_bin({**child.without_neuron_runtime_settings(), "NEURON_RT_VISIBLE_CORES": str(core)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Its stderr to a file: the runtime's log lines must not fill a pipe nobody reads while it holds the core.
    with tempfile.TemporaryFile("w+") as said:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(model_dir)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=said,
            text=True,
        )
        assert holder.stdout is not None  # stdout=PIPE
        ready, _, _ = select.select([holder.stdout], [], [], HOLDER_START_S)
        if ready and holder.stdout.readline().strip() == "held":
            return holder
        _release(holder)
        said.seek(0)
        raise DoctorError(
            f"the holder could not load the graph on NeuronCore {core}:\n{said.read()[-2000:]}",
            fix=f"is NeuronCore {core} free? neuron-ls --json-output lists its holder",
        )


def _release(holder: subprocess.Popen) -> None:
    from tasks.common.processes import end

    if holder.stdin is not None:
        holder.stdin.close()
    end(holder, grace=10)
    if holder.stdout is not None:
        holder.stdout.close()


def _neuron_monitor(monitor: NeuronMonitor) -> str:
    """One neuron-monitor report within MONITOR_WAIT_S, then stopped."""
    from tasks.common.polling import TimedOut, wait_until

    monitor.start()
    try:
        if monitor.note:
            raise DoctorError(
                monitor.note, fix="install aws-neuronx-tools (the Neuron DLAMI has it in /opt/aws/neuron/bin)"
            )
        try:
            wait_until(lambda: bool(monitor.reports), MONITOR_WAIT_S, "a neuron-monitor report", most=0.5)
        except TimedOut:
            raise DoctorError(
                f"neuron-monitor printed no report within {MONITOR_WAIT_S:g} s",
                fix=f"run neuron-monitor by hand as {_user()}: it needs the Neuron driver and "
                "read access to /dev/neuron*",
            ) from None
    finally:
        monitor.stop()
    result = monitor.result()
    return (
        f"neuron-monitor: {result.samples} report(s), {len(result.per_unit_pct)} NeuronCores reported, "
        f"device memory {result.device_memory_used_mib or 0:.0f} MiB"
    )
