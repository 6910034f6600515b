"""Limit stores picked from a URL; an unknown scheme fails naming the URL and the choices."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.limits.base import Rule
from gateway.limits.budget import MemoryLedger
from gateway.limits.budget_failover import FailoverLedger
from gateway.limits.budget_redis import RedisLedger
from gateway.limits.factory import is_shared, stores_from_url
from gateway.limits.leases import MemoryLeases, RedisLeases
from gateway.limits.memory import MemoryBuckets
from gateway.limits.redis import RedisBuckets
from tests.support.clock import FakeClock


async def test_memory_url_builds_in_process_stores() -> None:
    """memory:// gives in-process stores and no registry or client."""
    stores = stores_from_url("memory://")
    assert isinstance(stores.limiter, MemoryBuckets)
    assert isinstance(stores.leases, MemoryLeases)
    assert stores.instances is None and stores.client is None
    await stores.start()
    await stores.close()


@pytest.mark.parametrize(
    ("url", "client_type", "address"),
    [
        ("redis://127.0.0.1:6380/2", Redis, ("127.0.0.1", 6380, 2)),
        ("rediss://cache.internal:6390/0", Redis, ("cache.internal", 6390, 0)),
        ("redis+cluster://10.0.0.5:7000", RedisCluster, ("10.0.0.5", 7000, None)),
        ("rediss+cluster://10.0.0.5:7001", RedisCluster, ("10.0.0.5", 7001, None)),
    ],
    ids=["redis", "rediss", "cluster", "cluster-tls"],
)
async def test_redis_urls_build_shared_stores(
    url: str, client_type: type, address: tuple[str, int, int | None]
) -> None:
    """redis[s]:// and redis[s]+cluster:// share one (lazy) client among the Redis stores."""
    stores = stores_from_url(url, instance_id="gw-test")
    assert isinstance(stores.limiter, RedisBuckets)
    assert isinstance(stores.leases, RedisLeases)
    assert stores.instances is not None and stores.instances.instance_id == "gw-test"
    assert isinstance(stores.client, client_type)
    host, port, db = address
    if isinstance(stores.client, Redis):
        kwargs = stores.client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs.get("db", 0)) == (host, port, db)
    else:
        assert isinstance(stores.client, RedisCluster)
        assert [(n.host, n.port) for n in stores.client.startup_nodes] == [(host, port)]
    await stores.limiter.close()
    await stores.client.aclose()


@pytest.mark.parametrize("url", ["memcached://x:11211", "redis-cluster://x:7000", "x", ""])
def test_unknown_scheme_names_the_url_and_the_choices(url: str) -> None:
    """A URL of no known scheme fails with the URL and every scheme allowed."""
    with pytest.raises(ValueError, match="unknown scheme") as caught:
        stores_from_url(url)
    assert repr(url) in str(caught.value)
    for scheme in ("memory://", "redis://", "rediss://", "redis+cluster://"):
        assert scheme in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shared"),
    [("memory://", False), ("redis://h:6379/0", True), ("redis+cluster://h:7000", True)],
    ids=["memory", "redis", "cluster"],
)
def test_only_redis_is_shared(url: str, shared: bool) -> None:
    """memory:// is per process, so several workers would each get the full limit."""
    assert is_shared(url) is shared


def test_is_shared_rejects_unknown_schemes() -> None:
    """is_shared() validates like stores_from_url()."""
    with pytest.raises(ValueError, match="unknown scheme"):
        is_shared("mongodb://x")


@pytest.mark.parametrize(
    ("url", "primary_type"),
    [
        ("memory://", MemoryLedger),
        ("redis://127.0.0.1:6380/2", RedisLedger),
        ("redis+cluster://10.0.0.5:7000", RedisLedger),
    ],
    ids=["memory", "redis", "cluster"],
)
async def test_ledger_follows_the_url(url: str, primary_type: type) -> None:
    """The spend ledger is in process for memory://, on the same (lazy) client for Redis, behind a FailoverLedger."""
    stores = stores_from_url(url)
    assert isinstance(stores.ledger, FailoverLedger)
    assert isinstance(stores.ledger.primary, primary_type)
    assert isinstance(stores.ledger.local, MemoryLedger)
    await stores.close()


async def test_sweep_forgets_idle_in_process_state() -> None:
    """Buckets full again (the limiter's and the failover's share) and lapsed leases are dropped by one sweep."""
    clock = FakeClock()
    stores = stores_from_url("memory://", clock=clock)
    rule = Rule("webhooks", rate=1, per=1, burst=2)
    assert (await stores.failover.acquire("acme", [rule])).allowed
    stores.failover.local.acquire_now("bistro", [rule])
    assert await stores.leases.acquire("acme", "streams", 1, ttl=5.0) is not None
    assert stores.sweep() == 0  # nothing idle yet
    clock.advance(10.0)
    assert stores.sweep() == 3
    assert len(stores.limiter) == 0 and len(stores.failover.local) == 0  # type: ignore[arg-type]
    assert await stores.leases.count("acme", "streams") == 0
    await stores.close()
