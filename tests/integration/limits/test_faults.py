"""A Redis that dies, hangs and comes back: fast BackendErrors, fallbacks, then shared limits again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from gateway.errors import BackendError
from gateway.limits.base import Rule
from gateway.limits.breaker import CircuitBreaker, State
from gateway.limits.failover import FailoverLimiter
from gateway.limits.memory import MemoryBuckets
from gateway.limits.redis import RedisBuckets
from gateway.limits.redis_client import CircuitOpen, RedisClient, connect
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

DEADLINE = 0.050
# Event-loop and process scheduling on a loaded CI box; still far below a Twilio timeout.
SLACK = 0.200
RULE = Rule("webhooks", rate=3, per=3600.0, burst=3)


@dataclass
class Rig:
    server: RedisServer
    client: RedisClient
    limiter: RedisBuckets
    breaker_clock: FakeClock


@pytest.fixture
async def rig(redis_servers: Callable[..., RedisServer], clock: FakeClock) -> AsyncIterator[Rig]:
    """A private server and a limiter with the production deadline and a fake breaker clock."""
    server = redis_servers()
    breaker_clock = FakeClock()
    client = connect(server.url)
    limiter = RedisBuckets(client, clock=clock, deadline=DEADLINE, breaker=CircuitBreaker(breaker_clock))
    await limiter.acquire("warm-up", [RULE])
    yield Rig(server, client, limiter, breaker_clock)
    await limiter.close()
    await client.aclose()


async def timed_failure(limiter: RedisBuckets) -> tuple[BackendError, float]:
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await limiter.acquire("acme", [RULE])
    return caught.value, time.monotonic() - started


async def test_stopped_server_fails_within_the_deadline(rig: Rig) -> None:
    """With the server gone, acquire raises BackendError within the deadline."""
    rig.server.stop()
    error, took = await timed_failure(rig.limiter)
    assert took < DEADLINE + SLACK
    assert (error.backend, error.operation) == ("redis", "acquire")


async def test_hung_server_fails_at_the_deadline(rig: Rig) -> None:
    """With the server frozen (connection open, no answer), acquire gives up at the deadline."""
    rig.server.pause()
    try:
        error, took = await timed_failure(rig.limiter)
    finally:
        rig.server.resume()
    assert DEADLINE * 0.9 <= took < DEADLINE + SLACK
    assert isinstance(error.cause, TimeoutError)


async def test_breaker_opens_and_stops_calling_redis(rig: Rig) -> None:
    """After three failed round trips the breaker opens: no more calls until the cool-down."""
    rig.server.stop()
    for _ in range(3):
        await timed_failure(rig.limiter)
    assert rig.limiter.breaker.state is State.OPEN and not rig.limiter.healthy
    trips = rig.limiter.round_trips
    error, took = await timed_failure(rig.limiter)
    assert isinstance(error.cause, CircuitOpen)
    assert rig.limiter.round_trips == trips
    assert took < SLACK


@pytest.mark.parametrize(
    ("mode", "allowed", "remaining"),
    [("local", True, 2), ("open", True, 3), ("closed", False, 0)],
    ids=["local", "open", "closed"],
)
async def test_failover_answers_by_mode_while_redis_is_down(
    rig: Rig, clock: FakeClock, mode: str, allowed: bool, remaining: int
) -> None:
    """With Redis down, FailoverLimiter answers from its mode within the deadline and never raises."""
    failover = FailoverLimiter(rig.limiter, MemoryBuckets(clock))
    rig.server.stop()
    started = time.monotonic()
    decision = await failover.acquire("acme", [RULE], mode=mode)  # type: ignore[arg-type]
    assert time.monotonic() - started < DEADLINE + SLACK
    assert (decision.allowed, decision.remaining) == (allowed, remaining)
    assert failover.degraded


async def test_restarted_server_is_used_again(rig: Rig, clock: FakeClock) -> None:
    """A server restarted on its port (empty, no scripts) is used again by the same limiter,
    and its limits are shared again: another instance sees this one's charges."""
    failover = FailoverLimiter(rig.limiter, MemoryBuckets(clock))
    rig.server.stop()
    for _ in range(3):
        await failover.acquire("acme", [RULE])
    assert failover.degraded and rig.limiter.breaker.state is State.OPEN

    rig.server.start()
    rig.breaker_clock.advance(1.0)  # the cool-down passes; the next call is the probe
    first = await failover.acquire("acme", [RULE])
    assert (first.allowed, first.remaining) == (True, 2)
    assert not failover.degraded and rig.limiter.healthy

    other_client = connect(rig.server.url)
    other = RedisBuckets(other_client, clock=clock, deadline=DEADLINE)
    try:
        seen = [await other.acquire("acme", [RULE]) for _ in range(3)]
    finally:
        await other.close()
        await other_client.aclose()
    assert [(d.allowed, d.remaining) for d in seen] == [(True, 1), (True, 0), (False, 0)]
