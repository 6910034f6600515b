"""A circuit breaker, pure and clock-injected: stop calling a store that keeps failing."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from gateway.clock import Clock, monotonic

log = logging.getLogger(__name__)


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Transition = Callable[[State, State], None]
"""Called with (old, new) on every change of state."""


class CircuitBreaker:
    """Closed until `failures` consecutive failures; then open for `cooldown` seconds, during
    which nothing is let through; then half-open, letting one probe through: its success
    closes the breaker, its failure opens it again for another cooldown."""

    def __init__(self, clock: Clock = monotonic, failures: int = 3, cooldown: float = 1.0) -> None:
        if failures < 1 or cooldown < 0:
            raise ValueError(f"breaker needs failures >= 1 and cooldown >= 0, got {failures}, {cooldown}")
        self._clock = clock
        self._threshold = failures
        self._cooldown = cooldown
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._listeners: list[Transition] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._state is State.CLOSED

    def on_transition(self, callback: Transition) -> None:
        self._listeners.append(callback)

    def allow(self) -> bool:
        """May a call go out now? Moving from open to half-open makes the caller the probe."""
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._move(State.HALF_OPEN)
            return True
        # Half-open: the probe is out; everyone else waits for its verdict.
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not State.CLOSED:
            self._move(State.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is State.HALF_OPEN or (self._state is State.CLOSED and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self._move(State.OPEN)

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        for callback in self._listeners:
            try:
                callback(old, new)
            except Exception:
                # A broken log or metric hook must not break the request path it watches.
                log.exception("circuit breaker transition callback failed")
