"""BatchGate: a request joins the batch queue only when the model can take the batch it will be in.

Why (serving/ray_deployment.py): Ray Serve's @serve.batch forms its next batch as soon as the current one starts
-- it waits max_batch_delay from that batch's first request, then holds the batch until the model is free
(ray/serve/batching.py, _BatchQueue._process_batches: wait_for_batch, then the max_concurrent_batches semaphore).
When a batch on the model takes longer than max_batch_delay, as it does here (5 ms against hundreds), each batch
closes with the few requests that came in its first 5 ms. TorchServe's frontend instead forms a batch when a
worker asks for one. The gate gives @serve.batch that order: while a batch is on the model no request is let in,
and once it is done up to batch_size of those that waited are, together, so the next batch forms from them.

Pure asyncio, no Ray: shipped in the Serve package beside the deployment, and unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class BatchGate:
    """Admission to a batch queue: at most batch_size requests admitted and not yet on the model, and none while
    a batch is on it. A request holds a ticket from admit() until its batch starts (batch()) or it leaves (leave())."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.busy = False  # a batch is on the model
        self.admitted: set[object] = set()  # tickets let in, whose batch has not started
        self.turn = asyncio.Condition()

    async def admit(self) -> object:
        """Wait until no batch is on the model and the next one has room; return this request's ticket."""
        ticket = object()
        async with self.turn:
            await self.turn.wait_for(lambda: not self.busy and len(self.admitted) < self.batch_size)
            self.admitted.add(ticket)
        return ticket

    @contextlib.asynccontextmanager
    async def batch(self, tickets: Iterable[object]) -> AsyncIterator[None]:
        """Around one batch on the model: its requests' tickets are spent; when it is done, the next are let in."""
        async with self.turn:
            self.busy = True
            self.admitted.difference_update(tickets)
        try:
            yield
        finally:
            async with self.turn:
                self.busy = False
                self.turn.notify_all()

    async def leave(self, ticket: object) -> None:
        """A request that will not reach the model (cancelled while it waited in the queue) gives its place back;
        a no-op once its batch has started."""
        async with self.turn:
            if ticket in self.admitted:
                self.admitted.discard(ticket)
                self.turn.notify_all()
