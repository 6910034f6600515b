"""The in-process limiter: bounded memory with many tenants, and retries not charged twice."""

from __future__ import annotations

import pytest

from gateway.limits import memory
from gateway.limits.base import MAX_RETRY_TOKEN, RetryKey, Rule
from gateway.limits.memory import MemoryBuckets
from tests.support.clock import FakeClock

RULE = Rule("webhooks", rate=10, per=1.0, burst=10)
TOKEN = RetryKey("tok", "sig-first")
OTHER = RetryKey("tok", "sig-other")


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
    first = limiter.acquire_now("a", [RULE], retry=TOKEN)
    retry = limiter.acquire_now("a", [RULE], retry=TOKEN)
    other = limiter.acquire_now("b", [RULE], retry=TOKEN)
    assert (first.remaining, retry.remaining, other.remaining) == (9, 9, 9)
    assert (first.retry, retry.retry, other.retry) == ("new", "replay", "new")
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
    limiter.acquire_now("a", [SLOW], retry=RetryKey("noise", "sig"))  # traffic that rotates generations
    assert limiter.acquire_now("a", [SLOW], retry=TOKEN).remaining == 48
    clock.advance(delay)
    retry = limiter.acquire_now("a", [SLOW], retry=TOKEN)
    assert (retry.remaining, retry.retry) == ((47, "new") if charged else (48, "replay"))


@pytest.mark.parametrize("delay", [0.0, 29.9, 44.0], ids=["at-once", "gen-end", "previous-gen"])
def test_token_keeps_its_first_binding_across_generations(clock: FakeClock, delay: float) -> None:
    """Whichever generation holds it, a token replays only for its first binding; others are charged."""
    limiter = MemoryBuckets(clock, dedup_ttl=60)
    limiter.acquire_now("a", [SLOW], retry=TOKEN)
    clock.advance(delay)
    limiter.acquire_now("a", [SLOW], retry=RetryKey("noise", "sig"))  # rotates generations on the way
    other = limiter.acquire_now("a", [SLOW], retry=OTHER)
    replay = limiter.acquire_now("a", [SLOW], retry=TOKEN)
    assert (other.remaining, other.retry) == (47, "mismatch")
    assert (replay.remaining, replay.retry) == (47, "replay")


def test_refused_mismatch_does_not_take_over_the_token(clock: FakeClock) -> None:
    """A refused charge under another binding leaves the first binding in place."""
    limiter = MemoryBuckets(clock)
    limiter.acquire_now("a", [RULE], retry=TOKEN)
    for _ in range(9):
        limiter.acquire_now("a", [RULE])
    refused = limiter.acquire_now("a", [RULE], retry=OTHER)
    clock.advance(0.1)  # one token back
    replay = limiter.acquire_now("a", [RULE], retry=TOKEN)
    other = limiter.acquire_now("a", [RULE], retry=OTHER)
    assert (refused.allowed, refused.retry) == (False, "mismatch")
    assert (replay.allowed, replay.remaining, replay.retry) == (True, 1, "replay")
    assert (other.allowed, other.remaining, other.retry) == (True, 0, "mismatch")


def test_a_silence_longer_than_the_ttl_forgets_both_generations(clock: FakeClock) -> None:
    """After more than a whole TTL without tokens, both generations are dropped at once."""
    limiter = MemoryBuckets(clock, dedup_ttl=60)
    limiter.acquire_now("a", [SLOW], retry=TOKEN)
    clock.advance(29.9)
    limiter.acquire_now("a", [SLOW], retry=OTHER)  # a mismatch: not stored, generation unchanged
    clock.advance(30.2)
    again = limiter.acquire_now("a", [SLOW], retry=OTHER)
    assert (again.remaining, again.retry) == (47, "new")
    assert limiter.acquire_now("a", [SLOW], retry=OTHER).retry == "replay"


@pytest.mark.parametrize(
    ("length", "remembered"),
    [(1, True), (MAX_RETRY_TOKEN, True), (MAX_RETRY_TOKEN + 1, False), (10_000, False)],
    ids=["short", "at-bound", "one-over", "huge"],
)
def test_retry_token_length_is_bounded(clock: FakeClock, length: int, remembered: bool) -> None:
    """Tokens longer than MAX_RETRY_TOKEN are not remembered: each use is charged as if tokenless."""
    limiter = MemoryBuckets(clock)
    token = RetryKey("x" * length, "sig-first")
    first = limiter.acquire_now("a", [RULE], retry=token)
    again = limiter.acquire_now("a", [RULE], retry=token)
    assert first.retry == "new"
    assert (again.remaining, again.retry) == ((9, "replay") if remembered else (8, "new"))


def test_a_free_charge_claims_no_retry_token(clock: FakeClock) -> None:
    """As in redis_bucket.lua: a charge of cost 0 remembers no token, so the token's first real
    charge is charged (and not a replay)."""
    limiter = MemoryBuckets(clock)
    rule = Rule("webhooks", rate=1, per=1.0, burst=5)
    free = limiter.acquire_now("acme", [rule], 0, RetryKey("tok", "sig"))
    assert (free.allowed, free.retry) == (True, "new")
    first = limiter.acquire_now("acme", [rule], 1, RetryKey("tok", "sig"))
    assert (first.retry, first.remaining) == ("new", 4)
