"""Bursts on a real Redis: exact counts past the connection pool, no tenant's burst felt by another,
and holds that cost the same however many a tenant has live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.limits.base import Rule
from gateway.limits.breaker import State
from gateway.limits.budget import MemoryLedger, utc_day
from gateway.limits.budget_redis import amounts_key, held_key
from gateway.limits.factory import Stores, stores_from_url
from gateway.limits.redis import RedisBuckets
from gateway.limits.redis_client import gate_of
from tests.support.clock import FakeClock

pytestmark = pytest.mark.redis

DAY = utc_day(time.time())
PRICE = 1_000  # µ$ per webhook
CAP = 50 * PRICE  # fits 50
POOL = 4  # connections: far fewer than the burst, so most callers queue at the gate
HOLDS = 500_000


@pytest.fixture
async def stores(redis_url: str, clock: FakeClock) -> AsyncIterator[Stores]:
    """Redis stores with a pool of four connections, on the test's clock."""
    built = stores_from_url(redis_url, clock=clock, deadline=2.0, pool_size=POOL)
    try:
        yield built
    finally:
        await built.close()


async def _charges(stores: Stores, tenant: str, n: int) -> int:
    replies = await asyncio.gather(
        *(stores.ledger.charge(tenant, DAY, {"webhook": PRICE}, CAP, mode="local") for _ in range(n))
    )
    return sum(replies)


@pytest.mark.parametrize("burst", [110, 150, 200, 1000])
async def test_a_burst_past_the_pool_admits_exactly_what_fits_under_the_cap(stores: Stores, burst: int) -> None:
    """N concurrent budgeted charges on four connections: exactly 50 admitted, the store never
    marked degraded (before the gate, 200 admitted 51-54: pool exhaustion failed them over)."""
    assert await _charges(stores, "acme", burst) == 50
    assert not stores.ledger.degraded and not stores.failover.degraded
    gate = gate_of(stores.client) if stores.client is not None else None
    assert gate is not None and gate.waited > 0 and gate.gave_up == 0
    assert (await stores.ledger.spend("acme", DAY)).total == CAP


async def test_a_burst_after_steady_spend_stops_at_the_cap(stores: Stores) -> None:
    """45 one by one, then a burst of 200: five more admitted (the case that admitted 97-99)."""
    for _ in range(45):
        assert await stores.ledger.charge("acme", DAY, {"webhook": PRICE}, CAP)
    assert await _charges(stores, "acme", 200) == 5
    assert (await stores.ledger.spend("acme", DAY)).total == CAP


async def test_one_tenants_burst_changes_no_other_tenants_answers(stores: Stores) -> None:
    """1,000 concurrent charges and bucket takes for one tenant beside a `closed` tenant's steady
    ones: the other tenant is refused nothing, and the breaker stays closed."""
    rule = Rule("webhooks", rate=1, per=3600.0, burst=10)
    quiet = Rule("webhooks", rate=1, per=3600.0, burst=100)

    async def steady() -> list[bool]:
        answers = []
        for _ in range(20):
            decision = await stores.failover.acquire("calm", [quiet], mode="closed")
            admitted = await stores.ledger.charge("calm", DAY, {"webhook": PRICE}, 100 * PRICE, mode="closed")
            answers.append(decision.allowed and admitted)
        return answers

    noisy = [stores.failover.acquire("loud", [rule], mode="closed") for _ in range(1000)]
    spend = [stores.ledger.charge("loud", DAY, {"webhook": PRICE}, CAP, mode="closed") for _ in range(1000)]
    calm, decisions, charges = await asyncio.gather(steady(), asyncio.gather(*noisy), asyncio.gather(*spend))
    assert calm == [True] * 20
    assert sum(d.allowed for d in decisions) == 10 and sum(charges) == 50
    assert isinstance(stores.limiter, RedisBuckets)
    assert stores.limiter.breaker.state is State.CLOSED


def _hold_many(url: str, tenant: str, expiry: float) -> None:
    """HOLDS live holds of 1 µ$ written straight in the ledger's layout (as many reserve()s would
    leave them), in large pipelined commands: half a million script calls would take the test long."""
    with redis.Redis.from_url(url) as client:
        ids = [f"call:CA{i:032d}" for i in range(HOLDS)]
        pipe = client.pipeline(transaction=False)
        for start in range(0, HOLDS, 10_000):
            chunk = ids[start : start + 10_000]
            pipe.zadd(held_key(tenant, DAY), dict.fromkeys(chunk, expiry))
            pipe.hset(amounts_key(tenant, DAY), mapping=dict.fromkeys(chunk, 1))
        pipe.hset(amounts_key(tenant, DAY), "", HOLDS)
        pipe.execute()


def _script_usec(url: str) -> float:
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return float(stats.get("usec_per_call", 0.0))


def _reset_stats(url: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.config_resetstat()


async def test_half_a_million_live_holds_cost_redis_what_none_do(
    stores: Stores, redis_url: str, clock: FakeClock
) -> None:
    """A tenant holding 500,000 calls: a charge costs Redis about what it costs for a tenant
    holding none (server time per script call, which an O(holds) step multiplies ~10,000-fold),
    and the held total is exact."""
    # The scripts count seconds from 2024-01-01 (redis_prelude.lua), on the injected clock.
    _hold_many(redis_url, "busy", clock() + 3600.0)
    ledger = stores.ledger
    cap = 10 * HOLDS

    async def charges(tenant: str) -> float:
        _reset_stats(redis_url)
        for _ in range(200):
            assert await ledger.charge(tenant, DAY, {"webhook": 1}, cap)
        return _script_usec(redis_url)

    idle, busy = await charges("idle"), await charges("busy")
    assert busy < 10 * idle + 50, (idle, busy)
    assert (await ledger.spend("busy", DAY)).reserved == HOLDS
    # Every hold lapses at once: each step drops a bounded number of them (the rest still
    # count, erring towards stopping spend) and stays cheap.
    clock.advance(3601.0)
    _reset_stats(redis_url)
    assert (await ledger.spend("busy", DAY)).reserved == HOLDS - 256
    assert _script_usec(redis_url) < 50 * idle + 5_000


def test_half_a_million_live_holds_cost_the_memory_ledger_what_none_do(clock: FakeClock) -> None:
    """In process: charges beside 500,000 live holds take about as long as beside none (an
    O(holds) step would take ~10,000 times longer), and expiring them all is exact."""
    ledger = MemoryLedger(clock)
    for i in range(HOLDS):
        ledger._hold(("busy", DAY), f"call:{i}", 1, clock() + 3600.0)  # the bulk of reserve()

    def timed(tenant: str) -> float:
        started = time.process_time()
        for _ in range(2_000):
            assert ledger.charge_now(tenant, DAY, {"webhook": 1}, 10 * HOLDS)
        return time.process_time() - started

    idle, busy = timed("idle"), timed("busy")
    assert busy < 10 * idle + 0.05, (idle, busy)
    assert ledger.total_now("busy", DAY) == 2_000 + HOLDS
    clock.advance(3601.0)
    assert ledger.total_now("busy", DAY) == 2_000
