"""The unit suite's guard against real sleeps (tests/unit/conftest.py): what it fails, what it lets pass."""

import ast
import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.common.config import REPO_ROOT
from tests.unit import conftest
from tests.unit.fake_time import FakeClock, run_virtual

LIBRARY = str(Path(sys.prefix).resolve() / "lib" / "python3" / "site-packages" / "a_library.py")


def frame_in(filename: str):
    """A frame whose code is `filename`'s, as the guard sees its caller."""
    scope: dict = {}
    exec(compile("import sys\nframe = sys._getframe()", filename, "exec"), scope)
    return scope["frame"]


@pytest.fixture
def caught():
    """The guard's findings in this test, cleared at its end: the sleeps here are the guard's own test."""
    yield conftest._guard.seen
    conftest._guard.seen.clear()


def test_a_sleep_in_the_projects_code_fails_the_test_at_once_naming_where(caught):
    with pytest.raises(conftest.RealSleep, match=r"time\.sleep\(0\.01\) at .*test_no_real_sleep\.py"):
        time.sleep(0.01)
    assert len(caught) == 1


def test_an_asyncio_sleep_fails_on_a_real_loop_but_not_in_virtual_time(caught):
    async def nap():
        await asyncio.sleep(0.01)

    with pytest.raises(conftest.RealSleep, match=r"asyncio\.sleep\(0\.01\)"):
        asyncio.run(nap())
    clock = FakeClock()
    run_virtual(clock, nap())
    assert clock.now == pytest.approx(0.01) and len(caught) == 1


def test_a_sleep_in_a_thread_the_test_started_is_caught_too(caught):
    raised = []

    def nap():
        try:
            time.sleep(0.01)
        except conftest.RealSleep as error:
            raised.append(error)

    thread = threading.Thread(target=nap, name="napper")
    thread.start()
    thread.join()
    assert len(raised) == len(caught) == 1 and "thread napper" in caught[0]


def test_a_librarys_short_poll_and_its_own_threads_pass_but_not_its_back_off_on_the_tests_thread():
    guard = conftest._Guard("a test")
    guard.check("time.sleep", 0.05, frame_in(LIBRARY))  # subprocess.Popen.wait's poll
    with pytest.raises(conftest.RealSleep):
        guard.check("time.sleep", 2.0, frame_in(LIBRARY))  # a client backing off before its retry
    elsewhere = threading.Thread(target=guard.check, args=("time.sleep", 2.0, frame_in(LIBRARY)))
    elsewhere.start()
    elsewhere.join()
    assert len(guard.seen) == 1


def test_sleeping_nothing_passes():
    time.sleep(0)


def _sleeps_in_loops(path: Path, root: Path = REPO_ROOT) -> list[str]:
    found = []
    for loop in ast.walk(ast.parse(path.read_text())):
        if isinstance(loop, (ast.While, ast.For, ast.AsyncFor)):
            for node in ast.walk(loop):
                func = node.func if isinstance(node, ast.Call) else None
                if (isinstance(func, ast.Attribute) and func.attr == "sleep") or (
                    isinstance(func, ast.Name) and func.id == "sleep"
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_end_to_end_test_polls_with_a_sleep():
    """Real time is theirs, but a wait is wait_until (tasks/common/polling.py): a deadline, backoff, and what it last
    saw in the message -- not a loop around a sleep."""
    assert [spot for path in (REPO_ROOT / "tests" / "e2e").rglob("*.py") for spot in _sleeps_in_loops(path)] == []


def test_the_poll_finder_finds_a_sleep_in_a_loop(tmp_path):
    (tmp_path / "t.py").write_text("import time\nwhile True:\n    if x():\n        time.sleep(1)\n")
    assert _sleeps_in_loops(tmp_path / "t.py", tmp_path) == ["t.py:4"]
