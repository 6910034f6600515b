"""One contract, every backend: memory, Redis and Redis Cluster give the same Decisions."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits.base import DEDUP_TTL, MAX_RETRY_TOKEN, BucketStore, Decision, RetryKey, Rule
from gateway.limits.factory import Stores
from tests.support.clock import FakeClock

WEBHOOKS = Rule("webhooks", rate=5, per=1.0, burst=10)  # one token per 0.2 s
LLM = Rule("llm", rate=30, per=60.0, burst=10)  # one token per 2 s
CALLS = Rule("calls", rate=7, per=3600.0, burst=7)  # one token per 514.3 s


# One Twilio request and its retries, another request sent with the same token.
FIRST = RetryKey("tok-1", "sig-first")
OTHER = RetryKey("tok-1", "sig-other")


async def charge(limiter: BucketStore, n: int, rules: list[Rule], tenant: str = "acme") -> list[Decision]:
    return [await limiter.acquire(tenant, rules) for _ in range(n)]


async def advance(stores: Stores, clock: FakeClock, seconds: float) -> None:
    """Move the fake clock, and Redis's key expiry with it, which runs on Redis's own clock.

    Every key's time to live is shortened by `seconds`: one that ends within them is deleted,
    as Redis would have done by then.
    """
    clock.advance(seconds)
    if stores.client is None:
        return
    elapsed_ms = round(seconds * 1000)
    async for key in stores.client.scan_iter(match="sy:*"):
        ttl_ms = await stores.client.pttl(key)
        if ttl_ms < 0:
            continue  # gone meanwhile, or no expiry
        if ttl_ms <= elapsed_ms:
            await stores.client.delete(key)
        else:
            await stores.client.pexpire(key, ttl_ms - elapsed_ms)


async def test_fresh_bucket_admits_its_burst_counting_down(stores: Stores) -> None:
    """A fresh bucket admits `burst` charges, `remaining` counting down, then refuses."""
    decisions = await charge(stores.limiter, 11, [WEBHOOKS])
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert [d.remaining for d in decisions] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    assert [d.reset for d in decisions[:10]] == pytest.approx([0.2 * k for k in range(1, 11)])
    refused = decisions[-1]
    assert refused.retry_after == pytest.approx(0.2)
    assert refused.reset == pytest.approx(2.0)
    assert refused.rule == WEBHOOKS


async def test_bucket_refills_at_its_rate(stores: Stores, clock: FakeClock) -> None:
    """One token returns per interval: 0.2 s gives one charge, 1 s gives five."""
    await charge(stores.limiter, 10, [WEBHOOKS])
    clock.advance(0.2)
    one = await charge(stores.limiter, 2, [WEBHOOKS])
    assert [(d.allowed, d.remaining) for d in one] == [(True, 0), (False, 0)]
    clock.advance(1.0)
    five = await charge(stores.limiter, 6, [WEBHOOKS])
    assert [(d.allowed, d.remaining) for d in five] == [
        (True, 4), (True, 3), (True, 2), (True, 1), (True, 0), (False, 0),
    ]  # fmt: skip


async def test_idle_bucket_is_full_again(stores: Stores, clock: FakeClock) -> None:
    """After time-to-full without charges, the whole burst is back, and no more."""
    await charge(stores.limiter, 10, [WEBHOOKS])
    clock.advance(60.0)
    decisions = await charge(stores.limiter, 11, [WEBHOOKS])
    assert sum(d.allowed for d in decisions) == 10


async def test_all_or_nothing_across_rules(stores: Stores) -> None:
    """When one rule refuses, no rule is charged; the decision speaks for the refusing one."""
    loose = Rule("webhooks", rate=100, per=1.0, burst=100)
    tight = Rule("voice", rate=1, per=60.0, burst=1)
    first, second = await charge(stores.limiter, 2, [loose, tight])
    assert (first.allowed, first.remaining, first.rule) == (True, 0, tight)
    assert (second.allowed, second.rule) == (False, tight)
    assert second.retry_after == pytest.approx(60.0)
    (loose_only,) = await charge(stores.limiter, 1, [loose])
    assert loose_only.remaining == 98  # charged once, by the first call only


@pytest.mark.parametrize(("order", "speaker"), [(["a", "b"], "a"), (["b", "a"], "b")], ids=["a-first", "b-first"])
async def test_ties_speak_for_the_first_rule(stores: Stores, order: list[str], speaker: str) -> None:
    """Two rules equally tight: allowed or refused, the decision names the first listed."""
    rules = [Rule(name, rate=5, per=1.0, burst=2) for name in order]
    decisions = await charge(stores.limiter, 3, rules)
    assert [d.allowed for d in decisions] == [True, True, False]
    assert {d.rule.name for d in decisions} == {speaker}


async def test_retry_is_charged_once(stores: Stores) -> None:
    """A retry (same token, same binding) is reported as a replay but not charged again."""
    limiter = stores.limiter
    first = await limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    retry = await limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    other = await limiter.acquire("acme", [WEBHOOKS], retry=RetryKey("tok-2", "sig-first"))
    assert (first.allowed, first.remaining, first.retry) == (True, 9, "new")
    assert (retry.allowed, retry.remaining, retry.retry) == (True, 9, "replay")
    assert (other.allowed, other.remaining, other.retry) == (True, 8, "new")


async def test_refused_retry_token_is_charged_when_retried_later(stores: Stores, clock: FakeClock) -> None:
    """Only an admitted token is remembered: a refused request's retry is charged normally."""
    await charge(stores.limiter, 10, [WEBHOOKS])
    refused = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    clock.advance(0.4)
    retried = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    again = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    assert (refused.allowed, refused.retry) == (False, "new")
    assert (retried.allowed, retried.remaining, retried.retry) == (True, 1, "new")
    assert (again.allowed, again.remaining, again.retry) == (True, 1, "replay")


async def test_retry_is_admitted_uncharged_when_the_bucket_is_empty(stores: Stores, clock: FakeClock) -> None:
    """A replay of an admitted request is allowed from an empty bucket and takes no token."""
    await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    await charge(stores.limiter, 9, [WEBHOOKS])
    replay = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    assert (replay.allowed, replay.remaining, replay.retry) == (True, 0, "replay")
    clock.advance(0.2)  # one token back: still there, since the replay took none
    assert [(d.allowed, d.remaining) for d in await charge(stores.limiter, 2, [WEBHOOKS])] == [(True, 0), (False, 0)]


async def test_token_on_another_request_is_refused_when_the_bucket_is_empty(stores: Stores) -> None:
    """A known token with another binding inherits nothing: refused when empty, the first keeps it."""
    await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    await charge(stores.limiter, 9, [WEBHOOKS])
    other = await stores.limiter.acquire("acme", [WEBHOOKS], retry=OTHER)
    assert (other.allowed, other.remaining, other.retry) == (False, 0, "mismatch")
    assert other.retry_after == pytest.approx(0.2)
    replay = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    assert (replay.allowed, replay.retry) == (True, "replay")


async def test_token_on_another_request_is_charged_and_stays_the_firsts(stores: Stores) -> None:
    """A known token with another binding is charged; the first binding still replays, the other never does."""
    first = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    other = await stores.limiter.acquire("acme", [WEBHOOKS], retry=OTHER)
    other_again = await stores.limiter.acquire("acme", [WEBHOOKS], retry=OTHER)
    replay = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    assert (first.remaining, first.retry) == (9, "new")
    assert (other.allowed, other.remaining, other.retry) == (True, 8, "mismatch")
    assert (other_again.allowed, other_again.remaining, other_again.retry) == (True, 7, "mismatch")
    assert (replay.allowed, replay.remaining, replay.retry) == (True, 7, "replay")


async def test_retry_tokens_are_per_tenant(stores: Stores) -> None:
    """A token admitted for one tenant is new to another, even with the same binding."""
    await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    other_tenant = await stores.limiter.acquire("globex", [WEBHOOKS], retry=FIRST)
    again = await stores.limiter.acquire("globex", [WEBHOOKS], retry=FIRST)
    assert (other_tenant.allowed, other_tenant.remaining, other_tenant.retry) == (True, 9, "new")
    assert (again.remaining, again.retry) == (9, "replay")


async def test_retry_token_expires_after_the_dedup_ttl(stores: Stores, clock: FakeClock) -> None:
    """A token replays within half the dedup TTL (the least any store keeps it) and is new after the TTL."""
    await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    await advance(stores, clock, DEDUP_TTL / 2 - 1)
    within = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    await advance(stores, clock, DEDUP_TTL / 2 + 1.1)
    after = await stores.limiter.acquire("acme", [WEBHOOKS], retry=FIRST)
    assert (within.remaining, within.retry) == (10, "replay")
    assert (after.allowed, after.remaining, after.retry) == (True, 9, "new")


@pytest.mark.parametrize(("length", "outcome"), [(MAX_RETRY_TOKEN, "replay"), (MAX_RETRY_TOKEN + 1, "new")])
async def test_overlong_retry_token_is_not_remembered(stores: Stores, length: int, outcome: str) -> None:
    """A token up to MAX_RETRY_TOKEN characters is remembered; a longer one counts as none."""
    token = RetryKey("t" * length, "sig-first")
    await stores.limiter.acquire("acme", [WEBHOOKS], retry=token)
    again = await stores.limiter.acquire("acme", [WEBHOOKS], retry=token)
    assert (again.allowed, again.retry) == (True, outcome)
    assert again.remaining == (9 if outcome == "replay" else 8)


async def test_per_minute_rule(stores: Stores, clock: FakeClock) -> None:
    """30/min with burst 10: ten at once, then one every 2 s."""
    decisions = await charge(stores.limiter, 11, [LLM])
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[-1].retry_after == pytest.approx(2.0)
    assert decisions[-1].reset == pytest.approx(20.0)
    clock.advance(1.9)
    assert not (await stores.limiter.acquire("acme", [LLM])).allowed
    clock.advance(0.1)
    assert (await stores.limiter.acquire("acme", [LLM])).allowed


async def test_per_hour_rule(stores: Stores, clock: FakeClock) -> None:
    """7/h with burst 7: seven at once, the next after 3600/7 s."""
    decisions = await charge(stores.limiter, 8, [CALLS])
    assert [d.allowed for d in decisions] == [True] * 7 + [False]
    assert decisions[-1].retry_after == pytest.approx(3600 / 7)
    assert decisions[-1].reset == pytest.approx(3600.0)
    clock.advance(3600 / 7)
    assert (await stores.limiter.acquire("acme", [CALLS])).remaining == 0


async def test_cost_moves_reset_and_retry_after(stores: Stores, clock: FakeClock) -> None:
    """A charge of several tokens: reset grows by cost intervals; too big a charge says when."""
    three = await stores.limiter.acquire("acme", [WEBHOOKS], cost=3)
    assert (three.allowed, three.remaining) == (True, 7)
    assert three.reset == pytest.approx(0.6)
    eight = await stores.limiter.acquire("acme", [WEBHOOKS], cost=8)
    assert (eight.allowed, eight.remaining) == (False, 0)
    assert eight.retry_after == pytest.approx(0.2)
    assert eight.reset == pytest.approx(0.6)
    clock.advance(0.2)
    later = await stores.limiter.acquire("acme", [WEBHOOKS], cost=8)
    assert (later.allowed, later.remaining) == (True, 0)
    assert later.reset == pytest.approx(2.0)


async def test_tenants_are_isolated(stores: Stores) -> None:
    """Fifty tenants with the same rule each get their own full burst."""
    tenants = [f"tenant-{i}" for i in range(50)]
    results = await asyncio.gather(*(charge(stores.limiter, 11, [WEBHOOKS], t) for t in tenants))
    for decisions in results:
        assert [d.allowed for d in decisions] == [True] * 10 + [False]
