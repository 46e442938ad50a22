"""TCP ports: whether one can be listened on, and who listens. Shared by the server stage, the local
fleet (deployments/local.py) and the tests' "nothing is left running" checks."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

import psutil


def port_free(address: str, port: int) -> bool:
    """True unless something listens on address:port.

    The probe binds as servers do (TorchServe's Java listeners and uvicorn set SO_REUSEADDR), so only a
    listener refuses it, not the closed connections of a server just stopped, which the kernel keeps in
    TIME_WAIT for a minute: a run started right after an interrupted one must not be told its ports are taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
            return True
        except OSError:
            return False


def listeners(ports: Iterable[int]) -> dict[int, int | None]:
    """{port: pid or None} for each of `ports` that a socket listens on, on any address.

    "Is a server still there" asks exactly this. Binding a probe answers a different question: a port
    picked from the ephemeral range may, once its server is gone, be the source port of some other
    program's outgoing connection, which refuses the bind but is no server.
    """
    wanted = set(ports)
    return {
        conn.laddr.port: conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in wanted
    }


def owner(port: int) -> str:
    """' (by pid N, name)' for the process listening on `port`, or '' where that cannot be seen."""
    try:
        pid = listeners([port]).get(port)
        if pid:
            return f" (by pid {pid}, {psutil.Process(pid).name()})"
    except (psutil.Error, PermissionError):
        pass
    return ""


def free_ports(address: str, count: int) -> list[int]:
    """`count` distinct ports nothing listens on at address, picked by the OS. Every probe stays open until all
    are picked, so the OS cannot hand out one port twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((address, 0))
        return [probe.getsockname()[1] for probe in probes]
