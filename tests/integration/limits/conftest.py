"""Limit stores on every backend, with the test's FakeClock injected (for Redis, as `now`).

Redis expires keys on its own clock, not the fake one; the rules of these tests keep every
bucket's time-to-full at a second or more, far longer than a test takes, so a key never
expires under a test that still counts on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.limits.factory import Stores, stores_from_url
from tests.support.clock import FakeClock

# The contract is about the maths; the deadline gets its own tests (test_faults.py).
DEADLINE = 2.0

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a clean store of each backend."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    cluster_url: str = request.getfixturevalue("redis_cluster_url")
    return cluster_url


@pytest.fixture
async def stores(store_url: str, clock: FakeClock) -> AsyncIterator[Stores]:
    """The stores of one backend, charging against the test's clock."""
    built = stores_from_url(store_url, clock=clock, deadline=DEADLINE)
    try:
        yield built
    finally:
        await built.close()
