"""Deadline: what is left of Twilio's budget, as a timeout per I/O step, on an injected clock."""

from __future__ import annotations

import pytest

from gateway.deadline import ANSWER_MARGIN, TWILIO_TOTAL, Deadline, DeadlineExceeded
from tests.support.clock import FakeClock


def test_remaining_counts_down_with_the_clock(clock: FakeClock) -> None:
    """A deadline 15 s after start has 15 s left at start, 5 s after ten seconds, and then passes."""
    deadline = Deadline.after(TWILIO_TOTAL, clock)
    assert deadline.remaining() == pytest.approx(15.0)
    clock.advance(10)
    assert deadline.remaining() == pytest.approx(5.0)
    assert not deadline.expired()
    clock.advance(5)
    assert deadline.expired()


def test_timeout_keeps_the_margin_and_honours_a_cap(clock: FakeClock) -> None:
    """A step gets what is left less the answer margin, or its own cap when that is shorter."""
    deadline = Deadline.after(10.0, clock)
    assert deadline.timeout() == pytest.approx(10.0 - ANSWER_MARGIN)
    assert deadline.timeout(cap=2.0) == pytest.approx(2.0)
    clock.advance(9.0)
    assert deadline.timeout(cap=2.0) == pytest.approx(1.0 - ANSWER_MARGIN)


def test_no_step_starts_without_time_to_answer(clock: FakeClock) -> None:
    """Once only the margin is left, asking for a timeout raises instead of starting the step."""
    deadline = Deadline.after(1.0, clock)
    clock.advance(1.0 - ANSWER_MARGIN)
    with pytest.raises(DeadlineExceeded, match="margin"):
        deadline.timeout()


def test_start_may_be_given(clock: FakeClock) -> None:
    """A deadline measured from a request's start, not from now."""
    deadline = Deadline.after(15.0, clock, start=clock() - 4.0)
    assert deadline.remaining() == pytest.approx(11.0)
