"""TrivialEndpoint: a minimal HTTP/1.1 keep-alive server on 127.0.0.1, in a thread of its own, that answers
["paraphrase"] to any request. The benchmark's client check runs the load generator against it: what the client
alone can sustain, so a served figure far below it was not limited by the client (docs/benchmark.md). Tests give
it a known service time (`delay`, and `serial` for one request at a time: the capacity search's known curve).
"""

from __future__ import annotations

import asyncio
import threading


class TrivialEndpoint:
    """A minimal HTTP/1.1 keep-alive server on 127.0.0.1 in a thread of its own.

    Answers every request 200 ["paraphrase"] after `delay` s. `serial=True` answers one request at a time (a
    server with a single worker), so requests queue behind each other.
    """

    BODY = b'["paraphrase"]'

    def __init__(self, delay: float = 0.0, serial: bool = False, record: bool = False):
        self.delay, self.serial, self.record = delay, serial, record
        self.url = ""
        self.served = 0
        self.bodies: list[bytes] = []  # with record=True: every request body, in arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = await reader.readexactly(length) if length else b""
                if self.record:
                    self.bodies.append(body)
                if self.serial:
                    async with self._lock:
                        await asyncio.sleep(self.delay)
                elif self.delay:
                    await asyncio.sleep(self.delay)
                self.served += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(self.BODY), self.BODY)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _serve(self) -> None:
        async def main() -> None:
            self._lock = asyncio.Lock()
            self._stopped = asyncio.Event()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=1024)
            port = server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}/predictions/trivial"
            self._ready.set()
            async with server:
                await self._stopped.wait()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(main())
        finally:
            self._loop.close()

    def __enter__(self) -> TrivialEndpoint:
        self._thread = threading.Thread(target=self._serve, name="trivial-endpoint", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the trivial endpoint did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
