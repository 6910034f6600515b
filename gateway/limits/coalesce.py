"""Coalesce concurrent calls into batches: one round trip carries everything that queued up.

While a batch is in flight, new items wait; when it returns, all of them go out together. The
first item of an idle coalescer goes out on the next loop tick, with no fixed delay: latency is
one round trip when idle, and throughput grows with load instead of round trips per item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]
"""Sends one batch; returns one result or exception per item, in order, or raises for all."""


class Coalescer(Generic[T, R]):
    """Queues items, sends them in batches of at most `max_batch`, one batch in flight at a time."""

    def __init__(self, send: Send[T, R], max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        """Batches sent so far (a round-trip count for tests and metrics)."""

    async def submit(self, item: T) -> R:
        if self._closed:
            raise RuntimeError("coalescer is closed")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [entry for entry in self._queue[: self._max_batch] if not entry[1].done()]
                del self._queue[: self._max_batch]
                if batch:
                    await self._run(batch)
        finally:
            self._drainer = None

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            # Cancelled (close) or worse: no waiter may hang; then let it propagate.
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller gave up (cancelled) while the batch was out
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Stop sending; whoever still waits is cancelled."""
        self._closed = True
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()
            await asyncio.gather(drainer, return_exceptions=True)
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
