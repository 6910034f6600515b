"""The circuit breaker's states, driven by a fake clock."""

from __future__ import annotations

import pytest

from gateway.limits.breaker import CircuitBreaker, State
from tests.support.clock import FakeClock


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    """A breaker opening after 3 failures for 1 s."""
    return CircuitBreaker(clock, failures=3, cooldown=1.0)


def test_opens_after_consecutive_failures(breaker: CircuitBreaker) -> None:
    """Two failures leave it closed; the third in a row opens it and refuses calls."""
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and breaker.healthy
    breaker.record_failure()
    assert breaker.state is State.OPEN and not breaker.healthy
    assert not breaker.allow()


def test_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is State.CLOSED


def test_half_open_after_cooldown_lets_one_probe_through(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """After the cool-down exactly one caller is let through, as the probe."""
    for _ in range(3):
        breaker.record_failure()
    clock.advance(0.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.allow()
    assert breaker.state is State.HALF_OPEN
    assert not breaker.allow()


def test_probe_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A successful probe closes the breaker."""
    for _ in range(3):
        breaker.record_failure()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is State.CLOSED and breaker.allow()


def test_probe_failure_reopens_for_another_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A failed probe opens the breaker again, counting the cool-down from the probe."""
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is State.OPEN
    clock.advance(0.5)
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()


def test_transitions_are_reported(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Every change of state reaches the callbacks as (old, new), and only changes do."""
    seen: list[tuple[State, State]] = []
    breaker.on_transition(lambda old, new: seen.append((old, new)))
    for _ in range(4):
        breaker.record_failure()
    clock.advance(1.0)
    breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert seen == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


def test_failing_callback_does_not_break_the_breaker(breaker: CircuitBreaker) -> None:
    """A callback that raises is logged; the transition still happens."""

    def broken(old: State, new: State) -> None:
        raise RuntimeError("metrics down")

    breaker.on_transition(broken)
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is State.OPEN


@pytest.mark.parametrize(("failures", "cooldown"), [(0, 1.0), (3, -1.0)], ids=["no-failures", "negative"])
def test_rejects_impossible_settings(failures: int, cooldown: float) -> None:
    """Settings that could never work fail when the breaker is built."""
    with pytest.raises(ValueError, match="breaker needs"):
        CircuitBreaker(failures=failures, cooldown=cooldown)
