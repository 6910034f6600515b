"""The in-process limiter: bounded memory with many tenants, and retries not charged twice."""

from __future__ import annotations

import pytest

from gateway.limits import memory
from gateway.limits.base import Rule
from gateway.limits.memory import MemoryBuckets
from tests.support.clock import FakeClock

RULE = Rule("webhooks", rate=10, per=1.0, burst=10)


def test_full_buckets_are_forgotten(clock: FakeClock) -> None:
    """Ten thousand tenants charged once leave nothing behind once their buckets are full again."""
    limiter = MemoryBuckets(clock)
    for i in range(10_000):
        limiter.acquire_now(f"tenant-{i}", [RULE])
    assert len(limiter) == 10_000
    clock.advance(0.05)  # half a token back: not yet full
    assert limiter.sweep() == 0
    clock.advance(0.06)
    assert limiter.sweep() == 10_000
    assert len(limiter) == 0


def test_forgetting_a_full_bucket_changes_no_decision(clock: FakeClock) -> None:
    """A bucket dropped when full answers exactly as the kept one would have."""
    limiter = MemoryBuckets(clock)
    for _ in range(10):
        limiter.acquire_now("t", [RULE])
    clock.advance(1.0)
    limiter.sweep()
    decisions = [limiter.acquire_now("t", [RULE]) for _ in range(11)]
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    assert not decisions[10].allowed


def test_sweep_runs_by_itself_on_the_hot_path(clock: FakeClock) -> None:
    """Without anyone calling sweep(), charging keeps the table bounded."""
    limiter = MemoryBuckets(clock)
    for i in range(memory.SWEEP_EVERY * 3):
        clock.advance(0.2)  # every earlier bucket is full again by the next sweep
        limiter.acquire_now(f"tenant-{i}", [RULE])
    assert len(limiter) <= memory.SWEEP_EVERY


def test_retry_token_is_charged_once_and_per_tenant(clock: FakeClock) -> None:
    """The same idempotency token is free on retry for its tenant, but not for another tenant."""
    limiter = MemoryBuckets(clock)
    first = limiter.acquire_now("a", [RULE], dedup_key="tok")
    retry = limiter.acquire_now("a", [RULE], dedup_key="tok")
    other = limiter.acquire_now("b", [RULE], dedup_key="tok")
    assert (first.remaining, retry.remaining, other.remaining) == (9, 9, 9)
    assert limiter.acquire_now("a", [RULE]).remaining == 8


SLOW = Rule("slow", rate=1, per=3600.0, burst=50)


@pytest.mark.parametrize("arrival", [0.0, 12.5, 29.9, 44.0], ids=["gen-start", "gen-middle", "gen-end", "second-gen"])
@pytest.mark.parametrize(("delay", "charged"), [(29.9, False), (60.1, True)], ids=["within-half-ttl", "after-ttl"])
def test_retry_token_is_remembered_between_half_and_whole_ttl(
    clock: FakeClock, arrival: float, delay: float, charged: bool
) -> None:
    """Wherever a token lands in a generation, a retry within ttl/2 is free and one after ttl is charged."""
    limiter = MemoryBuckets(clock, dedup_ttl=60)
    clock.advance(arrival)
    limiter.acquire_now("a", [SLOW], dedup_key="noise")  # traffic that rotates generations as it would
    assert limiter.acquire_now("a", [SLOW], dedup_key="tok").remaining == 48
    clock.advance(delay)
    retry = limiter.acquire_now("a", [SLOW], dedup_key="tok")
    assert retry.remaining == (47 if charged else 48)
