"""port_free: a listener takes a port; the TIME_WAIT leftovers of a server just stopped do not."""

import os
import socket

import pytest

from tasks.common.config import ServingConfig
from tasks.common.ports import listeners, port_free
from tasks.serve.server import ServerError, pick_ports


def _stopped_server_port() -> int:
    """A port whose server (listening with SO_REUSEADDR, as Java's and uvicorn's do) closed its side of a
    connection first and then stopped: the kernel keeps that connection in TIME_WAIT on the port."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server closes first, as a killed TorchServe does
    client.recv(1)  # the server's FIN has arrived
    client.close()
    return port


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free():
    port = _stopped_server_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the case: a bind without SO_REUSEADDR is refused here
    assert port_free("127.0.0.1", port)
    # ...and the server stage agrees: a fixed port just left by an interrupted run is not "in use".
    serving = ServingConfig(inference_port=port)
    assert pick_ports(serving)["inference"] == port


def test_a_port_something_listens_on_is_not_free_and_the_server_stage_names_it():
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            pick_ports(ServingConfig(inference_port=port))


def test_listeners_sees_a_listening_socket_with_its_pid_and_not_a_connection_using_the_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))  # the client's own port is no listener
        with client:
            assert listeners([port, client.getsockname()[1]]) == {port: os.getpid()}
    assert listeners([port]) == {}
