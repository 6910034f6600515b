"""A clock that moves only when a test says so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class FakeClock:
    """Callable like time.monotonic; `advance` moves it, nothing else does."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stepping(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """A sleep() that lets its seconds pass on `clock` at once (then yields to the loop once):
    for waits a test does not step through one by one (queues, pacing, backoff)."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep
