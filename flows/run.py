"""One validation run as a context: whatever happens inside `with Run(...)`, TorchServe is stopped, the
summary and artifacts are written, and a failure ends the flow run naming its stage.

    with Run(config, resolved, parameters) as run:
        with run.stage("trace"):
            ...
"""

from __future__ import annotations

import contextlib
import signal
import threading

from prefect import get_run_logger

from flows.stages import Stages, StageFailed, stop_task
from tasks.config import ResolvedServing, RunConfig
from tasks.report.summary import build_summary, new_run_dir, publish_artifacts, publish_run_config, write_summary
from tasks.serve.server import Server, load_record


class Terminated(BaseException):
    """SIGTERM (a cancelled flow run, a killed job) turned into an exception so the stop still runs."""


@contextlib.contextmanager
def sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """The run directory, each stage's record, and the typed results so far."""

    def __init__(self, config: RunConfig, resolved: ResolvedServing, parameters: dict):
        self.config, self.resolved, self.parameters = config, resolved, parameters
        self.log = get_run_logger()
        self.dir = new_run_dir(config.runs_dir)
        self.stages = Stages()
        self.server: Server | None = None
        self.checks: list = []
        self.benchmark = None
        self.buckets = None
        self.summary: dict | None = None
        self._signals = sigterm_raises()

    def stage(self, name: str):
        return self.stages.run(name)

    @property
    def keep_serving(self) -> bool:
        """--keep-serving leaves TorchServe up only for a model that passed its checks."""
        return self.config.keep_serving and self.stages.records["check"].status == "ok"

    def __enter__(self) -> "Run":
        self.log.info("run directory %s; %d workers x %d threads (%s)", self.dir, self.resolved.initial_workers,
                      self.resolved.threads_per_worker, self.resolved.cores_source)
        for warning in self.config.serving.security_warnings():
            self.log.warning(warning)
        self._signals.__enter__()
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self._signals.__exit__(None, None, None)
        stop_error = self._stop()
        self._report()
        if stop_error is not None:
            raise StageFailed(self.stages) from stop_error
        if isinstance(error, Exception) and self.stages.failed():
            raise StageFailed(self.stages) from error  # the Failed state then names the stage
        if self.keep_serving:
            self.log.info("TorchServe kept serving at %s; stop it with: python -m flows.stop",
                          self.server.inference_url)
        return False

    def _stop(self) -> BaseException | None:
        # The run directory records a started server even when start itself did not return.
        self.server = self.server or load_record(self.dir / "server")
        if self.server is None or self.keep_serving:
            return None
        try:
            with self.stage("stop"):
                stop_task(self.server)
        except Exception as error:  # recorded; raised once the summary and artifacts are out
            return error
        return None

    def _report(self) -> None:
        serving = self.config.serving
        self.summary = build_summary(
            self.stages, self.checks, self.benchmark, self.config.model_dump(mode="json"),
            {"run_dir": str(self.dir), "resolved": self.resolved.model_dump(), "kept_serving": self.keep_serving,
             "security": {"token_auth": serving.token_auth, "address": serving.address,
                          "warnings": serving.security_warnings()},
             "server": _server_facts(self.server) if self.keep_serving else None,
             "bucket_comparison": self.buckets.model_dump() if self.buckets else None},
        )
        write_summary(self.dir, self.summary)
        publish_artifacts(self.summary, self.checks, self.dir, self.buckets)
        publish_run_config(self.parameters, self.summary)
        self.log.info("summary: %s", self.dir / "summary.json")


def _server_facts(server: Server) -> dict:
    """Where a kept server is; the key file's path, never a key."""
    return {"inference_url": server.inference_url, "management_url": server.management_url,
            "key_file": str(server.key_file)}
