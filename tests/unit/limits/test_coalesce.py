"""Coalescing: concurrent items share batches, each caller gets its own result or error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.limits.coalesce import Coalescer


class GatedSend:
    """A send() that records each batch and returns only when the test opens the gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_idle_coalescer_sends_at_once_then_batches_what_queued() -> None:
    """The first item goes alone; items arriving during its round trip go as one batch."""
    send = GatedSend()
    send.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(send)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert send.batches == [[0]]
    rest = [asyncio.create_task(coalescer.submit(i)) for i in (2, 4, 6)]
    await asyncio.sleep(0)
    send.gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [20, 40, 60]
    assert send.batches == [[0], [2, 4, 6]]
    assert coalescer.batches == 2


async def test_batches_are_capped() -> None:
    """More items than max_batch go out as several batches, in order."""
    send = GatedSend()
    coalescer: Coalescer[int, int] = Coalescer(send, max_batch=3)
    results = await asyncio.gather(*(coalescer.submit(i * 2) for i in range(7)))
    assert results == [i * 20 for i in range(7)]
    assert [len(batch) for batch in send.batches] == [3, 3, 1]


async def test_each_caller_gets_its_own_error() -> None:
    """An error for one item reaches only its caller."""
    coalescer: Coalescer[int, int] = Coalescer(GatedSend())
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 20
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)


async def test_failed_batch_fails_every_caller_with_one_error() -> None:
    """When the whole batch fails, every caller of it gets that same error."""
    boom = ConnectionError("down")

    async def send(items: Sequence[int]) -> list[int | BaseException]:
        raise boom

    coalescer: Coalescer[int, int] = Coalescer(send)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(5)), return_exceptions=True)
    assert all(result is boom for result in results)


async def test_cancelled_caller_is_not_sent() -> None:
    """An item whose caller gave up while it queued is dropped from the next batch."""
    send = GatedSend()
    send.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(send)
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    gone = asyncio.create_task(coalescer.submit(2))
    kept = asyncio.create_task(coalescer.submit(4))
    await asyncio.sleep(0)
    gone.cancel()
    send.gate.set()
    assert (await first, await kept) == (0, 40)
    assert send.batches == [[0], [4]]


async def test_close_cancels_waiters_and_refuses_new_items() -> None:
    """close() cancels whoever still waits; a closed coalescer takes nothing new."""
    send = GatedSend()
    send.gate.clear()
    coalescer: Coalescer[int, int] = Coalescer(send)
    waiting = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    await coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError, match="closed"):
        await coalescer.submit(2)
