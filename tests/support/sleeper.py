"""A sleep() for background loops (heartbeats) that returns only when the test says so."""

from __future__ import annotations

import asyncio

from tests.support.clock import FakeClock


class ManualSleep:
    """Pass as `sleep=`; each `await tick()` moves the clock by the seconds the sleeper asked
    for, wakes it, and returns once it has done its work and gone back to sleep."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._asleep = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None
        self.seconds = 0.0
        self.calls = 0

    async def __call__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls += 1
        self._wake = asyncio.get_running_loop().create_future()
        self._asleep.set()
        await self._wake

    async def tick(self) -> None:
        await asyncio.wait_for(self._asleep.wait(), 5)
        self._asleep.clear()
        self._clock.advance(self.seconds)
        assert self._wake is not None
        self._wake.set_result(None)
        await asyncio.wait_for(self._asleep.wait(), 5)
