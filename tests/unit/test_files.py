"""tasks/common/files.py: a record read while it is rewritten is the old one or the new one, never a part."""

import threading

from tasks.common.files import write_whole
from tasks.serve.server import load_record, record
from tests.unit.test_server_config import _server


def test_a_server_record_read_while_another_thread_rewrites_it_is_always_whole(tmp_path):
    """An interrupted night stops its server from two threads at once -- the main thread's stop rewrites
    server.json as it adopts the server's children while the interrupt watch's stop reads it. A reader that met
    a half-written (or truncated) file failed the stop stage: 'Invalid JSON: EOF while parsing' (a stress run)."""
    server = _server(tmp_path)
    record(server)
    done = threading.Event()

    def rewrite() -> None:
        while not done.is_set():
            record(server)

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        read = [load_record(tmp_path) for _ in range(3000)]
    finally:
        done.set()
        writer.join()
    assert all(each == server for each in read)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_a_whole_write_replaces_the_file(tmp_path):
    path = write_whole(tmp_path / "ray.json", "{}")
    assert write_whole(path, '{"a": 1}').read_text() == '{"a": 1}'
