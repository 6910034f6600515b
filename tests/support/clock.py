"""A clock that moves only when a test says so."""

from __future__ import annotations


class FakeClock:
    """Callable like time.monotonic; `advance` moves it, nothing else does."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
