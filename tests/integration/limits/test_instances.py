"""The instance registry: how many gateways share Redis, known even while Redis is down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from gateway.limits.instances import InstanceRegistry
from gateway.limits.redis_client import RedisClient, connect
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer
from tests.support.sleeper import ManualSleep

pytestmark = pytest.mark.redis


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    """A client of the test's clean Redis database."""
    redis_client = connect(redis_url)
    yield redis_client
    await redis_client.aclose()


def registry(client: RedisClient, name: str, clock: FakeClock) -> InstanceRegistry:
    return InstanceRegistry(client, name, ttl=15.0, interval=5.0, deadline=2.0, clock=clock)


async def test_instances_count_each_other(client: RedisClient, clock: FakeClock) -> None:
    """Three instances beating see three; one leaving is gone from the next count."""
    members = [registry(client, f"gw-{i}", clock) for i in range(3)]
    counts = [await member.heartbeat() for member in members]
    assert counts == [1, 2, 3]
    await members[2].close()
    assert await members[0].heartbeat() == 2
    assert members[0].live_instances() == 2


async def test_silent_instance_drops_out_after_its_ttl(client: RedisClient, clock: FakeClock) -> None:
    """An instance that stopped beating (crashed) stops counting once its TTL has passed."""
    alive, crashed = registry(client, "alive", clock), registry(client, "crashed", clock)
    await crashed.heartbeat()
    clock.advance(14.9)
    assert await alive.heartbeat() == 2
    clock.advance(0.1)
    assert await alive.heartbeat() == 1


async def test_background_heartbeat_keeps_the_count_fresh(client: RedisClient, clock: FakeClock) -> None:
    """start() beats at once and then every interval, refreshing live_instances()."""
    sleep = ManualSleep(clock)
    mine = InstanceRegistry(client, "mine", ttl=15.0, interval=5.0, clock=clock, sleep=sleep)
    other = registry(client, "other", clock)
    await mine.start()
    try:
        assert mine.live_instances() == 1
        await other.heartbeat()
        await sleep.tick()
        assert (sleep.seconds, mine.live_instances()) == (5.0, 2)
        for _ in range(3):  # 15 s without the other beating
            await sleep.tick()
        assert mine.live_instances() == 1
    finally:
        await mine.close()


async def test_last_count_survives_redis_going_down(
    redis_servers: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """While Redis is down, live_instances() answers the last count it had."""
    server = redis_servers()
    redis_client = connect(server.url)
    first, second = registry(redis_client, "a", clock), registry(redis_client, "b", clock)
    try:
        await first.heartbeat()
        await second.heartbeat()
        assert await first.heartbeat() == 2
        server.stop()
        await first.start()  # a failed beat is logged, not raised
        assert first.live_instances() == 2
        await first.close()
    finally:
        await redis_client.aclose()
