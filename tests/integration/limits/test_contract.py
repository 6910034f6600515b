"""One contract, every backend: memory, Redis and Redis Cluster give the same Decisions."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits.base import BucketStore, Decision, Rule
from gateway.limits.factory import Stores
from tests.support.clock import FakeClock

WEBHOOKS = Rule("webhooks", rate=5, per=1.0, burst=10)  # one token per 0.2 s
LLM = Rule("llm", rate=30, per=60.0, burst=10)  # one token per 2 s
CALLS = Rule("calls", rate=7, per=3600.0, burst=7)  # one token per 514.3 s


async def charge(limiter: BucketStore, n: int, rules: list[Rule], tenant: str = "acme") -> list[Decision]:
    return [await limiter.acquire(tenant, rules) for _ in range(n)]


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


async def test_dedup_key_is_charged_once(stores: Stores) -> None:
    """A retry with the same idempotency token is reported but not charged again."""
    limiter = stores.limiter
    first = await limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-1")
    retry = await limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-1")
    other = await limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-2")
    assert (first.allowed, first.remaining) == (True, 9)
    assert (retry.allowed, retry.remaining) == (True, 9)
    assert (other.allowed, other.remaining) == (True, 8)


async def test_refused_dedup_key_is_charged_when_retried_later(stores: Stores, clock: FakeClock) -> None:
    """Only an admitted token is remembered: a refused request's retry is charged normally."""
    await charge(stores.limiter, 10, [WEBHOOKS])
    refused = await stores.limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-9")
    clock.advance(0.4)
    retried = await stores.limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-9")
    again = await stores.limiter.acquire("acme", [WEBHOOKS], dedup_key="tok-9")
    assert not refused.allowed
    assert (retried.allowed, retried.remaining) == (True, 1)
    assert (again.allowed, again.remaining) == (True, 1)


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
