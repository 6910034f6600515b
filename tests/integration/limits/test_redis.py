"""What only the Redis store does: Redis TIME, key expiry, coalescing, script reloads, Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.limits.base import RetryKey, Rule
from gateway.limits.factory import stores_from_url
from gateway.limits.redis import RedisBuckets, bucket_key, dedup_key
from gateway.limits.redis_client import RedisClient, connect
from tests.support.clock import FakeClock

WEBHOOKS = Rule("webhooks", rate=5, per=1.0, burst=10)
HOURLY = Rule("calls", rate=3, per=3600.0, burst=3)  # one token per 1200 s
pytestmark = pytest.mark.redis

# Seconds from 1970 to the epoch of the scripts' clock (redis_prelude.lua).
TIME_BASE = 1_704_067_200


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    """A client of the test's clean Redis database."""
    redis_client = connect(redis_url)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def limiter(client: RedisClient, clock: FakeClock) -> AsyncIterator[RedisBuckets]:
    """A Redis limiter on the test's clock, with a deadline long enough for any CI box."""
    redis_limiter = RedisBuckets(client, clock=clock, deadline=2.0)
    yield redis_limiter
    await redis_limiter.close()


async def test_redis_time_is_the_clock_of_every_instance(redis_url: str, client: RedisClient) -> None:
    """Without an injected clock, the script reads Redis TIME: two instances share one clock."""
    first = stores_from_url(redis_url)
    second = stores_from_url(redis_url)
    try:
        drained = [await first.limiter.acquire("acme", [HOURLY]) for _ in range(3)]
        refused = await second.limiter.acquire("acme", [HOURLY])
        seconds, micros = await client.time()
        raw = await client.get(bucket_key("acme", "calls"))
        assert raw is not None
        stored = float(raw)
    finally:
        await first.close()
        await second.close()
    assert [d.allowed for d in drained] == [True] * 3
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1200.0, abs=1.0)
    server_now = seconds - TIME_BASE + micros / 1e6
    assert stored == pytest.approx(server_now + 3 * 1200.0, abs=1.0)


async def test_bucket_key_lives_until_the_bucket_is_full(
    limiter: RedisBuckets, client: RedisClient, clock: FakeClock
) -> None:
    """A bucket key expires at its time-to-full; refusals leave the expiry alone."""
    key = bucket_key("acme", "webhooks")
    for _ in range(10):
        await limiter.acquire("acme", [WEBHOOKS])
    # The TTL is rounded up: a key may outlive its bucket by under 1 ms, never die before it.
    drained = await client.pttl(key)
    assert 1_900 < drained <= 2_001
    refused = await limiter.acquire("acme", [WEBHOOKS])
    assert not refused.allowed
    assert await client.pttl(key) <= drained
    clock.advance(1.5)
    await limiter.acquire("acme", [WEBHOOKS])
    assert 500 < await client.pttl(key) <= 701


async def test_dedup_key_expires_after_its_ttl(redis_url: str, clock: FakeClock) -> None:
    """An admitted retry token is remembered for dedup_ttl, its key holding the binding, then forgotten."""
    redis_client = connect(redis_url)
    limiter = RedisBuckets(redis_client, clock=clock, deadline=2.0, dedup_ttl=30.0)
    try:
        await limiter.acquire("acme", [WEBHOOKS], retry=RetryKey("tok-1", "sig-first"))
        await limiter.acquire("acme", [WEBHOOKS], retry=RetryKey("tok-1", "sig-other"))
        pttl = await redis_client.pttl(dedup_key("acme", "tok-1"))
        binding = await redis_client.get(dedup_key("acme", "tok-1"))
    finally:
        await limiter.close()
        await redis_client.aclose()
    assert 29_000 < pttl <= 30_000
    assert binding == b"sig-first"


async def test_concurrent_acquires_share_round_trips(limiter: RedisBuckets, client: RedisClient) -> None:
    """500 concurrent acquires take a handful of pipelines and admit exactly the burst."""
    rule = Rule("webhooks", rate=1, per=3600.0, burst=100)
    await limiter.acquire("warm-up", [rule])  # loads the script: no NOSCRIPT below
    await client.config_resetstat()
    before = limiter.round_trips
    decisions = await asyncio.gather(*(limiter.acquire("acme", [rule]) for _ in range(500)))
    stats = await client.info("commandstats")
    assert sum(d.allowed for d in decisions) == 100
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(100))
    assert stats["cmdstat_evalsha"]["calls"] == 500
    assert limiter.round_trips - before <= 4  # 500 / 256 per batch, plus the first, sent alone


async def test_lost_scripts_are_loaded_again(limiter: RedisBuckets, client: RedisClient) -> None:
    """After SCRIPT FLUSH (as after a restart), acquires reload the script and go on."""
    await limiter.acquire("acme", [WEBHOOKS])
    await client.script_flush()
    results = await asyncio.gather(*(limiter.acquire("acme", [WEBHOOKS]) for _ in range(5)))
    assert [d.remaining for d in results] == [8, 7, 6, 5, 4]


@pytest.mark.cluster
async def test_cluster_batches_route_each_tenant_to_its_slot(redis_cluster_url: str, clock: FakeClock) -> None:
    """On Cluster, one batch spans tenants on every master, and each admits exactly its burst."""
    stores = stores_from_url(redis_cluster_url, clock=clock, deadline=2.0)
    tenants = [f"tenant-{i}" for i in range(30)]
    try:
        decisions = await asyncio.gather(
            *(stores.limiter.acquire(t, [WEBHOOKS], retry=None) for t in tenants for _ in range(12))
        )
    finally:
        await stores.close()
    assert sum(d.allowed for d in decisions) == 30 * 10


async def test_a_batch_connection_the_server_dropped_is_replaced_once(
    limiter: RedisBuckets, client: RedisClient
) -> None:
    """The limiter's own connection killed by the server between batches (a restart, an idle
    timeout): the next charge goes through on a new one, and the breaker hears no failure."""
    assert (await limiter.acquire("acme", [WEBHOOKS])).allowed
    killed = await client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    decision = await limiter.acquire("acme", [WEBHOOKS])
    assert decision.allowed and decision.remaining == 8
    assert limiter.healthy


async def test_the_first_batch_after_a_script_flush_needs_no_pooled_connection(
    redis_url: str, client: RedisClient, clock: FakeClock
) -> None:
    """A Redis without the script (restarted, SCRIPT FLUSH) while a burst holds every pooled
    connection: the coalesced batch loads its script on its own connection and is answered,
    not failed over with the pool's MaxConnectionsError."""
    stores = stores_from_url(redis_url, clock=clock, pool_size=1)
    assert isinstance(stores.client, Redis)
    pool = stores.client.connection_pool
    held = await pool.get_connection()  # type: ignore[no-untyped-call]  # the one pooled connection, busy
    await client.script_flush()
    try:
        decision = await stores.limiter.acquire("acme", [Rule("webhooks", rate=10, per=1, burst=5)])
        assert decision.allowed and decision.remaining == 4
    finally:
        await pool.release(held)
        await stores.close()
