"""The clock is passed in everywhere time matters, so tests never sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds as a float; only differences between two readings are meaningful."""

monotonic: Clock = time.monotonic
