"""The clock is passed in everywhere time matters, so tests never sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
"""Seconds as a float; only differences between two readings are meaningful."""

monotonic: Clock = time.monotonic

Sleep = Callable[[float], Awaitable[None]]
"""How background loops wait; tests pass one they step through by hand."""

sleep: Sleep = asyncio.sleep
