import contextlib
import ipaddress
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap

import psutil
import pytest

from tasks.common.config import ServingConfig
from tasks.common.processes import ProcessRef, kill_group
from tasks.serve.server import (
    Keys,
    Server,
    ServerError,
    check_java,
    find_stale,
    free_for_tonight,
    keep,
    load_record,
    pick_ports,
    read_keys,
    record,
    stop,
    stop_stale,
    write_config,
)


def _properties(path):
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


PORTS = {"inference": 18080, "management": 18081, "metrics": 18082, "grpc_inference": 17070, "grpc_management": 17071}


def test_write_config_uses_loopback_and_given_ports(tmp_path):
    store = tmp_path / "model_store"
    store.mkdir()
    serving = ServingConfig()
    props = _properties(write_config(serving, PORTS, store, tmp_path))
    for key in ("inference", "management", "metrics"):
        host, _, got_port = props[f"{key}_address"].removeprefix("http://").rpartition(":")
        assert ipaddress.ip_address(host).is_loopback, key
        assert int(got_port) == PORTS[key]
    # TorchServe 0.12 always opens gRPC too: it must be on loopback and on the run's own ports.
    for key in ("grpc_inference", "grpc_management"):
        assert ipaddress.ip_address(props[f"{key}_address"]).is_loopback, key
        assert int(props[f"{key}_port"]) == PORTS[key]
    assert props["enable_model_api"] == "true"
    assert props["model_store"] == str(store)
    assert props["default_response_timeout"] == str(serving.response_timeout)


def _java_unescape(value):
    """What Java's Properties.load makes of a value: a backslash escapes the next character."""
    return re.sub(r"\\(.)", r"\1", value)


def test_write_config_allows_urls_only_from_the_model_store(tmp_path):
    store = tmp_path / "run-1.x" / "model_store"
    store.mkdir(parents=True)
    pattern = _java_unescape(_properties(write_config(ServingConfig(), PORTS, store, tmp_path))["allowed_urls"])
    assert re.fullmatch(pattern, f"file://{store}/bert.mar")
    assert not re.fullmatch(pattern, f"file://{store}_other/bert.mar")
    assert not re.fullmatch(pattern, f"file://{tmp_path}/run-1yx/model_store/bert.mar")
    assert not re.fullmatch(pattern, f"file://{tmp_path}/bert.mar")
    assert not re.fullmatch(pattern, "https://example.com/bert.mar")


def test_write_config_uses_an_explicit_address(tmp_path):
    props = _properties(write_config(ServingConfig(address="10.1.2.3"), PORTS, tmp_path, tmp_path))
    assert props["inference_address"] == "http://10.1.2.3:18080"
    assert props["grpc_inference_address"] == "10.1.2.3"


def _unused_ports(count):
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


NAMES = ["inference", "management", "metrics", "grpc_inference", "grpc_management"]


@pytest.mark.parametrize("busy", ["inference", "management", "grpc_inference"])
def test_pick_ports_refuses_a_port_in_use(busy):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = dict(zip(NAMES, _unused_ports(len(NAMES)), strict=True))
        ports[busy] = taken
        with pytest.raises(ServerError) as caught:
            pick_ports(ServingConfig(**{f"{name}_port": port for name, port in ports.items()}))
    message = str(caught.value)
    assert f"port {taken}" in message
    assert "free_ports" in message


def test_pick_ports_keeps_free_configured_ports():
    ports = dict(zip(NAMES, _unused_ports(len(NAMES)), strict=True))
    serving = ServingConfig(**{f"{name}_port": port for name, port in ports.items()})
    assert pick_ports(serving) == ports


def test_free_ports_gives_five_distinct_bindable_ports():
    ports = pick_ports(ServingConfig(free_ports=True))
    assert set(ports) == set(NAMES) and len(set(ports.values())) == len(NAMES)
    for port in ports.values():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


SECRET_INFERENCE = "inf-SECRET-3f9a"
SECRET_MANAGEMENT = "mgmt-SECRET-77c1"


def test_keys_never_show_their_values():
    keys = Keys(inference=SECRET_INFERENCE, management=SECRET_MANAGEMENT)
    for shown in (repr(keys), str(keys), keys.model_dump_json(), str(keys.model_dump())):
        assert SECRET_INFERENCE not in shown and SECRET_MANAGEMENT not in shown
    assert keys.inference_header() == {"Authorization": f"Bearer {SECRET_INFERENCE}"}
    assert keys.management_header() == {"Authorization": f"Bearer {SECRET_MANAGEMENT}"}


def test_read_keys_from_torchserve_key_file(tmp_path):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(
        f'{{"management": {{"key": "{SECRET_MANAGEMENT}", "expiration time": "2030-01-01T00:00:00Z"}},'
        f' "inference": {{"key": "{SECRET_INFERENCE}", "expiration time": "2030-01-01T00:00:00Z"}},'
        ' "API": {"key": "other"}}'
    )
    keys = read_keys(key_file)
    assert keys.inference.get_secret_value() == SECRET_INFERENCE
    assert keys.management.get_secret_value() == SECRET_MANAGEMENT
    assert SECRET_INFERENCE not in repr(keys)


def _server(server_dir):
    return Server(
        server_dir=server_dir,
        temp_dir=server_dir / "tmp",
        inference_url="http://127.0.0.1:1",
        management_url="http://127.0.0.1:2",
        ports={},
        key_file=server_dir / "key_file.json",
        processes=[],
    )


def test_a_servers_logs_live_in_its_logs_directory(tmp_path):
    assert _server(tmp_path / "server").logs_dir == tmp_path / "server" / "logs"


def test_the_log_tail_quotes_torchserves_own_log_first(tmp_path):
    server = _server(tmp_path)
    server.logs_dir.mkdir()
    (server.logs_dir / "torchserve.out").write_text("launcher says hello\n")
    (server.logs_dir / "ts_log.log").write_text("".join(f"frontend line {n}\n" for n in range(100)))
    tail = server.log_tail(lines=2)
    assert tail.splitlines() == [
        f"--- {server.logs_dir / 'ts_log.log'} (last 2 lines) ---",
        "frontend line 98",
        "frontend line 99",
    ]


def test_before_torchserve_logs_anything_the_tail_is_the_launchers_output(tmp_path):
    server = _server(tmp_path)
    server.logs_dir.mkdir()
    (server.logs_dir / "torchserve.out").write_text("java: command not found\n")
    assert "java: command not found" in server.log_tail()
    assert server.log_tail().startswith(f"--- {server.logs_dir / 'torchserve.out'}")


def test_with_no_log_at_all_the_tail_says_where_it_looked(tmp_path):
    assert str(tmp_path / "logs") in _server(tmp_path).log_tail()


def _fake_java_home(tmp_path, version_line):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo '{version_line}' >&2
        """)
    )
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "jdk", java


def test_check_java_accepts_java_17(tmp_path, monkeypatch):
    home, java = _fake_java_home(tmp_path, 'openjdk version "17.0.2" 2022-01-18')
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert check_java() == str(java)


def test_check_java_refuses_java_8(tmp_path, monkeypatch):
    home, _ = _fake_java_home(tmp_path, 'java version "1.8.0_292"')
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(ServerError, match="Java 8 found"):
        check_java()


def test_check_java_missing_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))
    with pytest.raises(ServerError) as caught:
        check_java()
    assert "not installed" in str(caught.value)
    assert "JAVA_HOME" in caught.value.fix and "\nfix: install Java 11" in str(caught.value)


# A launcher that starts its "Java" only as our SIGTERM arrives, then dies of it: the race a stop right
# after start hits (a 0.01 s startup_timeout), where Java appears after the stop read the process tree.
LAUNCHER_STARTS_JAVA_AS_IT_DIES = """
import signal, subprocess, sys, time
def start_java_and_die(*_):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    sys.exit(0)
signal.signal(signal.SIGTERM, start_java_and_die)
print("ready", flush=True)
time.sleep(60)
"""


def _in_group(pgid: int) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.Error, OSError):
            pass
    return found


def test_a_java_the_launcher_started_as_it_died_is_stopped_too(tmp_path, ending_processes):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_STARTS_JAVA_AS_IT_DIES],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # as start() launches it
    try:
        assert launcher.stdout.readline().strip() == "ready"
        server = _server(tmp_path).model_copy(update={"processes": [ProcessRef.of(psutil.Process(launcher.pid))]})
        stop(server)
        assert launcher.wait(timeout=10) == 0  # it did die of the SIGTERM, after starting its child
        assert _in_group(launcher.pid) == []  # and that child, nobody's descendant by then, is gone too
    finally:
        kill_group(launcher.pid)
        launcher.wait()


def test_a_crashed_runs_java_whose_launcher_is_gone_is_still_found_and_stopped(tmp_path, ending_processes):
    """No recorded process is alive, but the launcher's group still holds its Java: the next run stops it."""
    owner = subprocess.Popen([sys.executable, "-c", "pass"])  # the crashed pipeline process
    owner_ref = ProcessRef.of(psutil.Process(owner.pid))
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.Popen([sys.executable, "
            "'-c', 'import time; time.sleep(60)']); print('ready', flush=True)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        launcher_ref = ProcessRef.of(psutil.Process(launcher.pid))
        assert launcher.stdout.readline().strip() == "ready" and launcher.wait(timeout=10) == 0
        owner.wait()
        server_dir = tmp_path / "runs" / "crashed" / "server"
        server_dir.mkdir(parents=True)
        server = _server(server_dir).model_copy(update={"owner": owner_ref, "processes": [launcher_ref]})
        record(server)
        assert _in_group(launcher.pid) != []  # its Java, an orphan now
        assert [s.server_dir for s in find_stale(tmp_path / "runs")] == [server_dir]
        assert len(stop_stale(tmp_path / "runs")) == 1
        assert _in_group(launcher.pid) == []
        assert find_stale(tmp_path / "runs") == []
    finally:
        kill_group(launcher.pid)


def test_the_engine_tells_torchserves_workers_from_the_rest_of_it(tmp_path):
    """Where the CPU and the memory went (tasks/measure/cpu.py, telemetry.py) is by role: a process whose command
    line is a TorchServe worker's (model_service_worker) runs the model; the launcher and the Java frontend serve it."""
    from tasks.engines.torchserve.engine import TorchServeEngine

    # The word is made at run time: the launcher's own command line must not hold it.
    code = "import subprocess, sys\nw = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
    code += "'model_service_' + 'worker'])\nprint(w.pid, flush=True)\nsys.stdin.read()"
    launcher = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(launcher.stdout.readline())
        server = _server(tmp_path).model_copy(update={"processes": [ProcessRef.of(psutil.Process(launcher.pid))]})
        record(server)
        engine = TorchServeEngine()
        started = engine.recorded(tmp_path)
        roles = engine.processes(started)
        assert [p.pid for p in roles["workers"]] == [worker]
        assert [p.pid for p in roles["frontend"]] == [launcher.pid]
    finally:
        kill_group(launcher.pid)
        launcher.kill()
        launcher.wait()


@pytest.fixture
def kept_server(tmp_path, ending_processes):
    """A TorchServe that a finished --keep-serving run left up: its owner (the command) has exited, its process
    still runs, and the run recorded it as kept. Stands in for Java with a sleeping process in its own group."""
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner_ref = ProcessRef.of(psutil.Process(owner.pid))
    owner.wait()
    serving = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    server_dir = tmp_path / "runs" / "20261205-020000-abcdef" / "server"
    server_dir.mkdir(parents=True)
    server = _server(server_dir).model_copy(
        update={"owner": owner_ref, "processes": [ProcessRef.of(psutil.Process(serving.pid))]}
    )
    keep(server)
    try:
        yield server
    finally:
        kill_group(serving.pid)
        serving.wait()


def test_a_server_kept_on_purpose_survives_the_next_runs_sweep_which_names_it(kept_server, tmp_path):
    """Its owner exited on purpose: it is no crash's leftover. The sweep leaves it and says how to stop it."""
    runs_dir = tmp_path / "runs"
    assert load_record(kept_server.server_dir).kept is True
    assert find_stale(runs_dir) == []
    lines = free_for_tonight(runs_dir, "cpu", workers=2)
    assert kept_server.processes[0].alive() is not None
    run_dir = kept_server.server_dir.parent
    assert lines == [
        f"a TorchServe kept serving by --keep-serving is left running: {run_dir} (http://127.0.0.1:1); "
        f"stop it with: python -m flows.stop {run_dir}"
    ]


def test_on_neuron_a_kept_server_refuses_tonights_run_before_anything_starts(kept_server, tmp_path, monkeypatch):
    """Its workers hold NeuronCores until they exit: the run stops before stopping or waiting for anything, naming
    the kept server and the command that stops it."""
    from tasks.serve import cores

    monkeypatch.setattr(cores, "ensure_free", lambda workers: pytest.fail("the cores were waited for"))
    with pytest.raises(ServerError) as refused:
        free_for_tonight(tmp_path / "runs", "neuron", workers=2)
    run_dir = kept_server.server_dir.parent
    assert f"kept serving by --keep-serving holds NeuronCores tonight's run needs: {run_dir}" in str(refused.value)
    assert refused.value.fix == f"stop it first: python -m flows.stop {run_dir}"
    assert kept_server.processes[0].alive() is not None  # never stopped by the pipeline
