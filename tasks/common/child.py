"""Work that may touch an accelerator runs in a short-lived child process, never in the flow's own.

The Neuron runtime gives the NeuronCores to the first process that runs a Neuron graph and keeps them
until that process exits (../shared/design.md, "Who may touch the accelerator"). The flow process lives
all night, so compile, parity and the in-process ceiling run here instead: `python -m <module>` with a
JSON request file, a JSON result file back, the child's stderr streamed into the stage's log. The same
path runs for every backend, so the nightly CPU run proves it.

A child module ends with `if __name__ == "__main__": child.main(work)`, where work(request: dict) ->
dict. A PipelineError raised in the child comes back as the same message and fix, raised in the parent
as the class the caller names. The child's stdout joins its stderr in the log: neuronx-cc writes why a
compile failed on stdout (NCC_ISMP902, users' reports), and the exception torch_neuronx raises does not say.

A child the Neuron runtime refused a NeuronCore may not live to report it: torch-neuronx can end the process
with an uncaught c10::Error (SIGABRT) instead of raising (huggingface/optimum-neuron#377, on Inf2). A caller
that treats a refusal as an outcome names the class to raise for it (`refused`), and the child's death with the
runtime's refusal in its last lines is raised as that class, with those lines.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from serving.claims import NEURON_CORE_REFUSED
from tasks.common.config import REPO_ROOT
from tasks.common.errors import PipelineError
from tasks.common.runlog import Log
from tasks.common.tools import with_environment_bin


class ChildError(PipelineError):
    """A child process failed without a PipelineError of its own (a crash, a kill, a bug)."""


def run(
    module: str,
    request: dict,
    error: type[PipelineError] = ChildError,
    log: Log | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    known: tuple[type[PipelineError], ...] = (),
    refused: type[PipelineError] | None = None,
) -> dict:
    """Run `python -m module` on request; return its result, or raise `error` with the child's message
    (or the class in `known` the child raised, matched by name; or `refused` when the Neuron runtime's refusal
    of a core ended the child)."""
    log = log or logging.getLogger(module)
    with tempfile.TemporaryDirectory(prefix="child-") as work:
        request_file, result_file = Path(work) / "request.json", Path(work) / "result.json"
        request_file.write_text(json.dumps(request))
        # This environment's bin first on PATH: torch_neuronx runs neuronx-cc by name (tasks/common/tools.py).
        child_env = with_environment_bin(dict(os.environ if env is None else env))
        # The child imports tasks/ and serving/ from this checkout, wherever the flow was started from.
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(request_file), str(result_file)],
            cwd=REPO_ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        # In the caller's context: Prefect's log handler picks its API by the settings of the thread that logs,
        # and a thread of no context has none -- its lines went to a Prefect server of their own, started for
        # them (10 s, mid-stage; measured on a night Ctrl-C'd during its ceiling), not to the run's.
        reader = threading.Thread(
            target=contextvars.copy_context().run, args=(_stream, process.stdout, log, module, lines), daemon=True
        )
        reader.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise error(f"{module} did not finish within {timeout:g} s", fix="see its log lines above") from None
        except BaseException:  # interrupted (Ctrl-C, SIGTERM to this process alone): the child ends with the run
            process.kill()
            process.wait()
            raise
        finally:
            reader.join(timeout=5)
        answer = json.loads(result_file.read_text()) if result_file.is_file() else None
    if code == 0 and answer and "result" in answer:
        return answer["result"]
    if answer and "error" in answer:
        raised = answer["error"]
        error = next((kind for kind in known if kind.__name__ == raised.get("kind")), error)
        raise error(raised["message"], fix=raised.get("fix"), retryable=raised.get("retryable", False))
    last = lines[-20:]
    first = next((i for i, line in enumerate(last) if NEURON_CORE_REFUSED.search(line)), None)
    if refused is not None and first is not None:
        said = [line.strip() for line in last[first : first + 4]]  # the runtime's line and how the process ended
        raise refused(
            f"the Neuron runtime refused {module} a NeuronCore, and the process died of it ({_ending(code)}): "
            + " / ".join(said),
            fix="another process holds the core, or held it a moment ago: neuron-ls --json-output names it",
        )
    raise error(
        f"{module} exited with code {code} and no result\n" + "\n".join(last),
        fix="read the child's log lines above; a negative code is the signal that killed it",
    )


def _ending(code: int) -> str:
    """How a process ended, from its exit status: a signal's name when it was killed by one."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def without_neuron_runtime_settings() -> dict[str, str]:
    """This environment less every inherited NEURON_RT_* (an inherited VISIBLE_CORES=0 would put every
    process that loads a Neuron graph on core 0): what children and TorchServe's workers start from."""
    return {key: value for key, value in os.environ.items() if not key.startswith("NEURON_RT_")}


def one_core_env() -> dict[str, str]:
    """This environment for a child that may load a Neuron graph: no inherited NEURON_RT_*, and one core,
    which the runtime picks among the free ones (ignored off Neuron). A child never needs more."""
    return {**without_neuron_runtime_settings(), "NEURON_RT_NUM_CORES": "1"}


def _stream(pipe: Iterable[str], log: Log, module: str, lines: list[str]) -> None:
    for line in pipe:
        line = line.rstrip()
        lines.append(line)
        log.info("[%s] %s", module.rsplit(".", 1)[-1], line)


def main(work: Callable[[dict], dict]) -> None:
    """The child's side: read the request, do the work, write the result or the error, exit."""
    request_file, result_file = Path(sys.argv[1]), Path(sys.argv[2])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        answer = {"result": work(json.loads(request_file.read_text()))}
        code = 0
    except PipelineError as failure:
        answer = {
            "error": {
                "message": failure.message,
                "fix": failure.fix,
                "retryable": failure.retryable,
                "kind": type(failure).__name__,
            }
        }
        code = 1
    except Exception as failure:  # a bug or a library's error: its traceback goes to the log
        traceback.print_exc()
        answer = {"error": {"message": f"{type(failure).__name__}: {failure}", "fix": None}}
        code = 1
    result_file.write_text(json.dumps(answer))
    sys.stderr.flush()
    sys.exit(code)
