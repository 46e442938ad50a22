"""ProcessRef and the one escalating stop, on real child processes: what TorchServe's stop and `local.py down` rely on.

The stops run on a fake clock (the ending_processes fixture, tests/unit/fake_time.py): a grace period passes at
once, and a child a signal ends is waited for by its exit, so no test waits for time to pass."""

import platform
import signal
import subprocess
import sys

import psutil
import pytest

from tasks.common.ports import listeners
from tasks.common.processes import ProcessRef, ctrl_c_deferred, descendants, group_members, kill_group, stop, tail
from tests.unit.fake_time import ended

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)
SLEEPS = "import time; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def spawn():
    """Start Python children that say 'ready' once set up; whatever a test leaves is killed afterwards."""
    children = []

    def _spawn(code: str, new_session: bool = False) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=new_session
        )
        children.append(child)
        assert child.stdout.readline().strip() == "ready"
        return child

    yield _spawn
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def _ref(child: subprocess.Popen) -> ProcessRef:
    return ProcessRef.of(psutil.Process(child.pid))


def test_process_ref_finds_a_running_process():
    process = ProcessRef.of(psutil.Process()).alive()
    assert process is not None and process.pid == psutil.Process().pid


def test_a_process_ref_whose_pid_now_belongs_to_another_process_is_not_ours():
    me = psutil.Process()
    ref = ProcessRef.of(me)
    assert ref.model_copy(update={"create_time": ref.create_time - 5.0}).alive() is None


def test_a_process_that_ended_is_not_alive_even_before_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ref = _ref(child)
    ended(child.pid)
    assert ref.alive() is None
    assert psutil.pid_exists(child.pid)  # a zombie until it is reaped
    child.wait()


def test_a_process_ref_reads_back_from_its_pid_file_line():
    ref = ProcessRef.of(psutil.Process())
    assert ProcessRef.parse(ref.line() + "\n") == ref


def _step_the_wall_clock(monkeypatch, seconds: float) -> None:
    """What NTP stepping the clock does to psutil: the boot time it reads from /proc/stat moves, and with it
    every process's create_time (ticks after boot + that boot time)."""
    platform_boot_time = psutil._psplatform.boot_time
    monkeypatch.setattr(psutil._psplatform, "boot_time", lambda: platform_boot_time() + seconds)


@pytest.mark.skipif(sys.platform != "linux", reason="the clock step is simulated through psutil's Linux module")
@pytest.mark.parametrize("seconds", [30.0, -30.0])
def test_a_step_of_the_wall_clock_does_not_lose_a_running_process(spawn, monkeypatch, ending_processes, seconds):
    """Seen on the test host: a run recorded its TorchServe, the clock stepped 30 s, and the run's stop found
    no process of its record alive and left TorchServe running."""
    child = spawn(SLEEPS, new_session=True)
    ref = _ref(child)
    _step_the_wall_clock(monkeypatch, seconds)
    assert psutil.Process(child.pid).create_time() == pytest.approx(ref.create_time + seconds)  # the step took
    assert ref.alive() is not None
    assert [member.pid for member in group_members(ref)] == [child.pid]
    assert stop([ref], grace=1).stopped == 1 and child.poll() is not None


def test_a_record_written_before_the_boot_time_was_kept_still_names_its_process():
    me = psutil.Process()
    older = ProcessRef.parse(f"{me.pid} {me.create_time()}")
    assert older.boot_time is None and older.alive() is not None
    assert ProcessRef.model_validate({"pid": me.pid, "create_time": me.create_time()}).alive() is not None


def test_a_child_that_ignores_sigterm_is_killed(spawn, ending_processes, fake_clock):
    child = spawn(IGNORES_SIGTERM)
    ref = _ref(child)
    result = stop([ref], grace=0.5, settle=5)
    assert ref.alive() is None
    assert (result.stopped, result.escalated, result.survivors) == (1, [child.pid], [])
    assert ending_processes.sent == [(child.pid, signal.SIGTERM), (child.pid, signal.SIGKILL)]
    assert 0.5 <= fake_clock.now < 1.0  # the whole grace, then the kill's end at the next look or so: not its 5 s


def test_a_child_that_obeys_sigterm_is_not_escalated(spawn, ending_processes, fake_clock):
    child = spawn(SLEEPS)
    ref = _ref(child)
    result = stop([ref], grace=10)
    assert ref.alive() is None
    assert (result.stopped, result.escalated, result.survivors) == (1, [], [])
    assert ending_processes.sent == [(child.pid, signal.SIGTERM)] and fake_clock.now < 0.1  # not the whole grace


def test_processes_not_picked_first_get_the_grace_period_before_their_sigterm(spawn, ending_processes):
    frontend, worker = _ref(spawn(SLEEPS)), _ref(spawn(SLEEPS))
    result = stop([frontend, worker], grace=0.5, first=lambda alive: [p for p in alive if p.pid == frontend.pid])
    assert frontend.alive() is None and worker.alive() is None
    assert result.escalated == [worker.pid]  # it outlived the grace: nobody had asked it to stop yet
    # Then its own SIGTERM, which sufficed: no SIGKILL round.
    assert ending_processes.sent == [(frontend.pid, signal.SIGTERM), (worker.pid, signal.SIGTERM)]


@pytest.mark.parametrize("group", [False, True], ids=["process", "process group"])
def test_a_recycled_pid_with_a_different_create_time_is_never_signalled(spawn, group, ending_processes):
    child = spawn(SLEEPS, new_session=group)
    ref = _ref(child)
    stale = ref.model_copy(update={"create_time": ref.create_time - 100.0})
    result = stop([stale], grace=0.2, group=group)
    assert result.stopped == 0
    assert ending_processes.sent == [], "a process that merely reuses the pid must be left alone"
    assert child.poll() is None


def test_a_process_group_is_stopped_whole(spawn, ending_processes):
    leader = spawn(
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
        "time.sleep(60)']); print('ready', flush=True); time.sleep(60)",
        new_session=True,
    )
    (grandchild,) = descendants([_ref(leader)])
    result = stop([_ref(leader)], grace=10, group=True)
    assert result.survivors == []
    assert ending_processes.sent == [(-leader.pid, signal.SIGTERM)]  # to the whole group
    ended(grandchild.pid)  # the leader's end is all the stop waits for; its group's signal ends the grandchild too
    assert grandchild.alive() is None


# A parent, its child and its grandchild; the grandchild says 'ready' (on the stdout all three share) once it runs.
GRANDCHILD = "import time; print('ready', flush=True); time.sleep(60)"
CHILD = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); time.sleep(60)"
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {CHILD!r}]); time.sleep(60)"


def test_descendants_lists_children_and_grandchildren_once(spawn, ending_processes):
    parent = spawn(PARENT)
    ref = _ref(parent)
    below = descendants([ref])
    assert len(below) == 2, "the child and the grandchild"
    assert len({r.pid for r in below}) == 2
    assert len(descendants([ref], recursive=False)) == 1
    assert descendants([ref, *below]) == []  # what is already named is not listed again
    stop([ref, *below], grace=5)
    assert all(r.alive() is None for r in below)


def test_tail_gives_the_last_lines_under_a_header_naming_the_file(tmp_path):
    log = tmp_path / "ts_log.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    text = tail(log, 3)
    assert text.splitlines() == [f"--- {log} (last 3 lines) ---", "line 97", "line 98", "line 99"]


def test_tail_of_a_missing_log_is_none(tmp_path):
    assert tail(tmp_path / "never-written.log") is None


def test_ctrl_c_during_a_deferred_section_arrives_right_after_it():
    # Ctrl-C as in a terminal, whatever this test process inherited (a shell's background job ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c_deferred():
                signal.raise_signal(signal.SIGINT)  # delivered, and its handler run, before this returns
                done.append("recorded")  # a Ctrl-C must not cut the section short
        assert done == ["recorded"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_kill_group_kills_a_session_leader_and_what_it_started(spawn):
    leader = spawn(
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
        "time.sleep(60)']); print('ready', flush=True); time.sleep(60)",
        new_session=True,
    )
    (child,) = psutil.Process(leader.pid).children()  # started before it said 'ready'
    kill_group(leader.pid)
    ended(child.pid)
    assert leader.wait(timeout=10) == -signal.SIGKILL


def test_an_orphan_that_exited_is_stopped_even_before_pid_1_reaps_it(spawn, ending_processes):
    """A Java whose launcher was killed first is PID 1's child; once it exits it is a zombie until PID 1
    reaps it (over a second here), and a zombie holds nothing: the stop has succeeded, not failed."""
    parent = spawn(
        "import subprocess, sys; child = subprocess.Popen([sys.executable, '-c', 'import time; "
        "time.sleep(60)']); print('ready', flush=True); print(child.pid, flush=True)"
    )
    orphan = psutil.Process(int(parent.stdout.readline()))
    parent.wait(timeout=10)
    assert orphan.ppid() != parent.pid  # reparented as its parent exited: not our child, not its parent's
    stopped = stop([ProcessRef.of(orphan)], grace=0.2, settle=0.2)
    assert stopped.survivors == [] and stopped.stopped == 1
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE


SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())  # exit(2): ends the calling thread only
# Listens, then its main thread exits while another thread lives on: a zombie that still holds its socket. That
# thread says 'zombie' once the main thread is one (it looks again at once, yielding: no sleep).
MAIN_THREAD_EXITS_FIRST = (
    "import ctypes, os, socket, threading, time\n"
    "listening = socket.create_server(('127.0.0.1', 0))\n"
    "def live_on():\n"
    "    while open('/proc/self/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n"
    "        os.sched_yield()\n"
    "    print('zombie', flush=True)\n"
    "    time.sleep(60)\n"
    "threading.Thread(target=live_on).start()\n"
    "print('ready', flush=True); print(listening.getsockname()[1], flush=True)\n"
    f"ctypes.CDLL(None).syscall({SYS_EXIT}, 0)\n"
)


@pytest.mark.skipif(SYS_EXIT is None, reason=f"no exit(2) syscall number known for {platform.machine()}")
def test_a_zombie_whose_other_threads_still_run_has_not_ended_and_its_port_is_free_after_stop(spawn, ending_processes):
    """A killed Java's main thread can be a zombie while its other threads are still exiting, holding its
    sockets: seen in CI as a port still listening after stop had reported every process gone."""
    child = spawn(MAIN_THREAD_EXITS_FIRST)
    port = int(child.stdout.readline())
    process = psutil.Process(child.pid)
    assert child.stdout.readline().strip() == "zombie"
    assert process.status() == psutil.STATUS_ZOMBIE
    assert port in listeners([port])
    ref = ProcessRef.of(process)
    assert ref.alive() is not None

    stopped = stop([ref], grace=5, settle=5)

    assert stopped.stopped == 1 and stopped.survivors == []
    assert ref.alive() is None
    assert listeners([port]) == {}
