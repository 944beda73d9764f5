"""How many bytes of chunk bodies one web process holds in memory at once.

A chunk is up to UPLOAD_MAX_CHUNK_SIZE (16 MiB) and is held whole in memory from its
first byte read until its answer (its MD5 is checked before a byte is written). Without a
bound a web process held every chunk in flight: 40 concurrent 8 MiB PUTs took one to
over 400 MB RSS (bench/RESULTS.md). So each chunk PUT reserves its bytes from this
process's CHUNK_MEMORY_BUDGET_BYTES before it reads its body, and gives them back when it
has been answered. While the budget is spent, a request waits, in arrival order, without
reading: uvicorn stops reading a request's socket once 64 KiB of its body wait unread
(its flow control's high-water mark), so the rest of the body stays with the client (or
the proxy) instead of this process. A request waits at most CHUNK_MEMORY_WAIT_SECONDS,
then is answered 503 ``server_busy`` with Retry-After: clients send the chunk again, and
a proxy in front (nginx gives up on an upstream that reads nothing for 60 s) never cuts
it off first.

One asyncio event loop per web process (uvicorn's): the budget is not thread-safe and is
used from the loop only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from django.conf import settings

from relaypacs.errors import ApplicationError

from .metrics import CHUNK_MEMORY_WAIT_SECONDS

logger = logging.getLogger(__name__)

# What a client that honours Retry-After waits before sending a refused chunk again: long
# enough for the chunks ahead of it (at least four per second even on a busy process) to
# make room, short against the minutes an upload takes. The PWA ignores it and backs off
# by itself (one second, doubling), which comes to about the same.
RETRY_AFTER_SECONDS = 5


class ChunkMemoryBusy(ApplicationError):
    """The request waited CHUNK_MEMORY_WAIT_SECONDS for room in the budget and got none."""

    def __init__(self) -> None:
        super().__init__(
            "server_busy",
            "The server is receiving many chunks at once and could not take this one in time.",
            "Nothing of it was stored: send it again in a few seconds (the app does so by itself).",
            status_code=503,
        )


class ChunkMemoryBudget:
    """At most ``capacity`` bytes reserved at once, granted first come, first served.

    A reservation larger than the capacity is cut to it: such a request gets through when
    nothing else is reserved. A later request never overtakes an earlier one that waits
    (no starvation of large chunks by small ones).
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a chunk memory budget needs a positive capacity")
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for their reservation."""
        return sum(1 for _, future in self._waiters if not future.done())

    @asynccontextmanager
    async def reserved(self, size: int, *, timeout: float) -> AsyncIterator[int]:
        """Hold ``size`` bytes (cut to ``[0, capacity]``) for the block; the size held.

        Waits while the budget is spent, at most ``timeout`` seconds, then raises
        ChunkMemoryBusy. The bytes are given back however the block ends (answer, error,
        cancellation); a request cancelled while it waits takes nothing.
        """
        size = min(max(size, 0), self.capacity)
        await self._acquire(size, timeout=timeout)
        try:
            yield size
        finally:
            self._release(size)

    async def _acquire(self, size: int, *, timeout: float) -> None:
        if not self._waiters and self.held + size <= self.capacity:
            self.held += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await future
            CHUNK_MEMORY_WAIT_SECONDS.observe(time.monotonic() - started)
        except BaseException as exc:
            CHUNK_MEMORY_WAIT_SECONDS.observe(time.monotonic() - started)
            if future.done() and not future.cancelled():
                # Granted in the same moment as the timeout or cancellation: given back.
                self._release(size)
            else:
                future.cancel()
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                # A large request leaving the head of the queue may let smaller ones in.
                self._grant()
            if isinstance(exc, TimeoutError):
                raise ChunkMemoryBusy() from None
            raise

    def _release(self, size: int) -> None:
        self.held -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():  # cancelled meanwhile
                self._waiters.popleft()
                continue
            if self.held + size > self.capacity:
                return
            self._waiters.popleft()
            self.held += size
            future.set_result(None)


def chunk_memory_budget_from_settings() -> ChunkMemoryBudget:
    """This process's budget: CHUNK_MEMORY_BUDGET_BYTES, raised to UPLOAD_MAX_CHUNK_SIZE
    (with a warning) when set below it, so that a chunk of the largest size allowed
    never waits for more room than there is."""
    capacity = int(settings.CHUNK_MEMORY_BUDGET_BYTES)
    largest = int(settings.UPLOAD_MAX_CHUNK_SIZE)
    if capacity < largest:
        logger.warning(
            "CHUNK_MEMORY_BUDGET_BYTES=%d is below the largest chunk (UPLOAD_MAX_CHUNK_SIZE=%d):"
            " this web process uses %d instead",
            capacity,
            largest,
            largest,
        )
        capacity = largest
    return ChunkMemoryBudget(capacity)
