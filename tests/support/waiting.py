"""Waiting in tests for what the code under test does in its own time, always bounded."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def _true(ready: Callable[[], object]) -> bool:
    result = ready()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def until(ready: Callable[[], object], *, within: float = 5.0, every: float = 0.01) -> None:
    """Until `ready()` (a plain or an async function) is true, asking every `every` seconds;
    TimeoutError after `within`."""
    async with asyncio.timeout(within):
        while not await _true(ready):  # noqa: ASYNC110 - polling state that has no event to wait on
            await asyncio.sleep(every)


async def first(attempt: Callable[[], Awaitable[T | None]], *, within: float, every: float = 0.0) -> T:
    """The first result of `attempt()` that is not None, trying again every `every` seconds;
    TimeoutError after `within`."""
    async with asyncio.timeout(within):
        while (result := await attempt()) is None:  # noqa: ASYNC110 - each attempt asks again
            await asyncio.sleep(every)
        return result
