import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.stand_ins import host

# Directories this test session made for itself, removed when it ends: a compile cache holds the traced
# models of every test (about 700 MB), and one left per session filled /tmp over a few days.
_made: list[str] = []


def _own_directory(variable: str, prefix: str) -> None:
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _made.append(os.environ[variable])


# No network on validation hosts or CI: Prefect's server must not phone home.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A Prefect home of the test session's own (inherited by the pipelines the tests start as
# subprocesses): the suite never reads, writes or migrates the user's ~/.prefect database.
_own_directory("PREFECT_HOME", "prefect-home-tests-")
# A compile cache of the session's own: no test reuses (or fills) the checkout's .cache/compile.
_own_directory("BERT_COMPILE_CACHE", "compile-cache-tests-")
# The pipelines tests start as subprocesses run on Prefect's temporary server; on a busy 2-core host it
# can take longer than Prefect's default 20 s to come up.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def pytest_unconfigure(config):
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def neuron_host(monkeypatch, tmp_path):
    """A Neuron host made of the stand-ins, with a service's PATH (tests/stand_ins/host.py); yields the
    stand-in torch_neuronx's event log."""
    log = tmp_path / "torch_neuronx.log"
    with host.compiler_installed():
        host.set_up(monkeypatch, tmp_path, log)
        yield log
    host.tear_down()


def _torchserve_under(base: Path) -> list[psutil.Process]:
    """TorchServe's launcher, frontend and workers running in a directory under `base` (a run's server directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command, cwd = " ".join(process.info["cmdline"] or []), process.info["cwd"] or ""
        if ("torchserve" in command or "org.pytorch.serve" in command or "model_service_worker" in command) and (
            Path(cwd).is_relative_to(base)
        ):
            found.append(process)
    return found


@pytest.fixture(scope="session", autouse=True)
def no_torchserve_outlives_the_tests(tmp_path_factory):
    """Whatever a test asserts, a TorchServe one of its runs started and left behind fails the session (and is
    stopped): a leak once passed unseen, in a test that did not look for it."""
    yield
    base = tmp_path_factory.getbasetemp().resolve()
    left = _torchserve_under(base)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    assert not left, f"TorchServe processes outlived the tests: {[(p.pid, p.info['cwd']) for p in left]}"
