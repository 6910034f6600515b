"""Random charge sequences: the Lua script and bucket.py give bit-identical Decisions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits.base import RetryKey, Rule
from gateway.limits.memory import MemoryBuckets
from gateway.limits.redis import RedisBuckets
from gateway.limits.redis_client import connect
from tests.support.clock import FakeClock

pytestmark = pytest.mark.redis

# Intervals 0.5 s, 2 s and 7/3 s (not a binary fraction); time-to-full at most 10 s of the fake
# clock, while Redis expires keys on its own: far longer than one example runs.
RULES = [
    Rule("sec", rate=2, per=1.0, burst=4),
    Rule("min", rate=30, per=60.0, burst=5),
    Rule("odd", rate=3, per=7.0, burst=3),
]

advance = st.one_of(st.sampled_from([0.0, 0.5, 2.0, 7 / 3]), st.floats(0.0, 4.0))
charge = st.tuples(
    st.lists(st.sampled_from(RULES), min_size=1, max_size=3, unique=True),
    st.integers(1, 3),
    # Two tokens, one of them also sent with another request's binding (a mismatch).
    st.sampled_from([None, None, ("tok-a", "sig-1"), ("tok-a", "sig-2"), ("tok-b", "sig-1")]),
)
steps = st.lists(st.one_of(advance, charge), max_size=20)
# At most 20 advances of 4 s: the memory store keeps a token at least half its TTL (120 s), so
# no token expires in one store and not the other.
DEDUP_TTL = 240.0


@pytest.fixture
async def both(redis_url: str, clock: FakeClock) -> AsyncIterator[tuple[MemoryBuckets, RedisBuckets]]:
    """A memory and a Redis limiter on one fake clock."""
    client = connect(redis_url)
    redis_limiter = RedisBuckets(client, clock=clock, deadline=2.0, dedup_ttl=DEDUP_TTL)
    yield MemoryBuckets(clock, DEDUP_TTL), redis_limiter
    await redis_limiter.close()
    await client.aclose()


# The fixtures serve every example: each example charges a tenant of its own.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
async def test_random_sequences_agree(
    both: tuple[MemoryBuckets, RedisBuckets],
    clock: FakeClock,
    steps: list[float | tuple[list[Rule], int, tuple[str, str] | None]],
) -> None:
    """Any sequence of clock advances and charges gets the same Decisions, retry outcome included, from both stores."""
    memory, redis_limiter = both
    tenant = uuid.uuid4().hex
    for step in steps:
        if isinstance(step, float):
            clock.advance(step)
            continue
        rules, cost, token = step
        retry = None if token is None else RetryKey(f"{tenant}-{token[0]}", token[1])
        expected = await memory.acquire(tenant, rules, cost, retry)
        assert await redis_limiter.acquire(tenant, rules, cost, retry) == expected
