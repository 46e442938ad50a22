import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.unit.fake_time import EndingProcesses, FakeClock

# --- No real sleeps in unit tests -----------------------------------------------------------------------------
# A unit test never waits for a real clock: code under test that sleeps gets a fake clock (tests/unit/fake_time.py)
# and a test waits for events, not for time to pass. While a test in tests/unit runs, time.sleep and asyncio.sleep
# (on a real event loop) with a positive duration fail it when:
#   - the project's own code calls them (tests, tasks, serving, flows, tools), on any thread; or
#   - a library calls them on the test's own thread for longer than LIBRARY_POLL_S (Prefect's client backing
#     off before a retry): a library's short polls (subprocess.Popen.wait(timeout), psutil) pass, as do the
#     sleeps of a library's own background threads.
# A test that truly needs real sleeps says so with @pytest.mark.real_sleep("why"); none does today.

REPO_ROOT = Path(__file__).resolve().parents[2]
_OURS = str(REPO_ROOT) + os.sep
# The environment's packages (.venv, CI's .venv-tf4: inside the checkout, but not the project's code).
_LIBRARIES = tuple({str(Path(prefix).resolve()) + os.sep for prefix in (sys.prefix, sys.exec_prefix)})
LIBRARY_POLL_S = 0.05  # subprocess.Popen.wait polls at most this long between looks

_real_sleep = time.sleep
_real_asyncio_sleep = asyncio.sleep


class RealSleep(AssertionError):
    """A unit test slept on the real clock."""


class _Guard:
    def __init__(self, test: str):
        self.test = test
        self.seen: list[str] = []

    def check(self, what: str, seconds: float, frame) -> None:
        code = frame.f_code.co_filename
        ours = code.startswith(_OURS) and not code.startswith(_LIBRARIES) and os.sep + "site-packages" not in code
        on_test_thread = threading.current_thread() is threading.main_thread()
        if not (ours or (on_test_thread and seconds > LIBRARY_POLL_S)):
            return
        where = (
            f"{what}({seconds:g}) at {code}:{frame.f_lineno} ({frame.f_code.co_name}), thread "
            f"{threading.current_thread().name}"
        )
        self.seen.append(where)
        raise RealSleep(
            f"a real sleep in a unit test: {where}. Give the code a fake clock "
            "(tests/unit/fake_time.py) or wait for an event instead"
        )


_guard: _Guard | None = None  # the running unit test's


def _sleep(seconds):
    guard = _guard
    if guard is not None and seconds > 0:
        guard.check("time.sleep", seconds, sys._getframe(1))
    return _real_sleep(seconds)


def _asyncio_sleep(delay, *args, **kwargs):
    guard = _guard
    if guard is not None and delay > 0:
        try:
            virtual = getattr(asyncio.get_running_loop(), "virtual_time", False)
        except RuntimeError:
            virtual = False
        if not virtual:
            guard.check("asyncio.sleep", delay, sys._getframe(1))
    return _real_asyncio_sleep(delay, *args, **kwargs)


time.sleep = _sleep
asyncio.sleep = _asyncio_sleep


def pytest_configure(config):
    config.addinivalue_line("markers", "real_sleep(why): this unit test may sleep on the real clock (none should)")


@pytest.fixture(autouse=True)
def no_real_sleep(request):
    """Fail a unit test that sleeps on the real clock (see above)."""
    global _guard
    if request.node.get_closest_marker("real_sleep") is not None:
        yield
        return
    _guard = guard = _Guard(request.node.nodeid)
    try:
        yield
    finally:
        _guard = None
    if guard.seen:
        pytest.fail("real sleeps in a unit test:\n  " + "\n  ".join(guard.seen), pytrace=False)


@pytest.fixture
def fake_clock():
    """A FakeClock at 0 s (tests/unit/fake_time.py)."""
    return FakeClock()


@pytest.fixture
def ending_processes(fake_clock, monkeypatch):
    """tasks/common/processes.py's stops of real processes on the fake clock (tests/unit/fake_time.py)."""
    return EndingProcesses(fake_clock).install(monkeypatch)


@pytest.fixture(scope="session")
def tokenizer():
    """The real tokenizer of the embedded all-MiniLM-L6-v2 checkpoint (local files only)."""
    from transformers import AutoTokenizer

    from tasks.prepare.trace import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()), local_files_only=True)
