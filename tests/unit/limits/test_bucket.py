"""Token-bucket maths in GCRA form, with the clock passed in."""

from __future__ import annotations

import pytest

from gateway.limits import bucket
from gateway.limits.base import Rule

PER_SECOND = Rule("webhooks", rate=10, per=1.0, burst=5)


def drain(rule: Rule, now: float, n: int) -> tuple[float | None, list[bool]]:
    tat: float | None = None
    results = []
    for _ in range(n):
        (tat,), decision = bucket.take([tat], [rule], now)
        results.append(decision.allowed)
    return tat, results


def test_full_bucket_admits_exactly_burst() -> None:
    """A fresh bucket admits `burst` requests at one instant and refuses the next."""
    _, results = drain(PER_SECOND, 100.0, 7)
    assert results == [True] * 5 + [False] * 2


def test_remaining_counts_down_to_zero() -> None:
    """`remaining` is the whole tokens left after each admitted charge."""
    tat: float | None = None
    seen = []
    for _ in range(5):
        (tat,), decision = bucket.take([tat], [PER_SECOND], 0.0)
        seen.append(decision.remaining)
    assert seen == [4, 3, 2, 1, 0]


def test_refusal_says_when_to_retry_and_refills_at_rate() -> None:
    """After the burst, the retry delay is one interval, and one token returns per interval."""
    tat, _ = drain(PER_SECOND, 0.0, 5)
    (_,), refused = bucket.take([tat], [PER_SECOND], 0.0)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1)
    (tat2,), later = bucket.take([tat], [PER_SECOND], 0.1)
    assert later.allowed and later.remaining == 0
    (_,), again = bucket.take([tat2], [PER_SECOND], 0.1)
    assert not again.allowed


def test_refusal_charges_nothing() -> None:
    """A refused charge leaves the stored state as it was."""
    tat, _ = drain(PER_SECOND, 0.0, 5)
    (after,), decision = bucket.take([tat], [PER_SECOND], 0.0)
    assert not decision.allowed and after == tat


def test_all_or_nothing_across_buckets() -> None:
    """When one bucket refuses, the others are not charged either."""
    tight = Rule("voice", rate=1, per=60.0, burst=1)
    loose = Rule("webhooks", rate=100, per=1.0, burst=100)
    tats, first = bucket.take([None, None], [loose, tight], 0.0)
    assert first.allowed and first.rule is tight
    tats2, second = bucket.take(tats, [loose, tight], 0.0)
    assert not second.allowed and second.rule is tight
    assert tats2 == tats
    assert second.retry_after == pytest.approx(60.0)


def test_reset_is_time_until_full() -> None:
    """`reset` counts the seconds until every token is back."""
    (_,), decision = bucket.take([None], [PER_SECOND], 0.0, cost=3)
    assert decision.reset == pytest.approx(0.3)


def test_full_again_after_idle() -> None:
    """An idle bucket is full again at its tat and can be forgotten."""
    tat, _ = drain(PER_SECOND, 0.0, 5)
    assert not bucket.is_full(tat, 0.49)
    assert bucket.is_full(tat, 0.5)
    (_,), decision = bucket.take([tat], [PER_SECOND], 10.0)
    assert decision.remaining == 4


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(1, 1.0, 1), (3, 1.0, 3), (50, 60.0, 10), (7, 3600.0, 7), (1000, 1.0, 2000)],
    ids=["1/s", "3/s", "50/min", "7/h", "1000/s"],
)
def test_admissions_over_a_window_match_rate_plus_burst(rate: int, per: float, burst: int) -> None:
    """Over a window, a greedy client gets burst + rate * window / per, no more."""
    rule = Rule("r", rate=rate, per=per, burst=burst)
    tat: float | None = None
    admitted = 0
    steps = 400
    window = per * 2
    for i in range(steps + 1):
        now = window * i / steps
        while True:
            (new,), decision = bucket.take([tat], [rule], now)
            if not decision.allowed:
                break
            tat, admitted = new, admitted + 1
    assert admitted == burst + rate * 2
