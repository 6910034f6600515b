"""The gate in front of a Redis client: bursts wait their turn, and waiting is not failing."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import BackendError
from gateway.limits.base import Rule
from gateway.limits.failover import FailoverLimiter
from gateway.limits.memory import MemoryBuckets
from gateway.limits.redis_client import Gate, Overloaded, guard
from tests.support.clock import FakeClock


async def test_a_free_slot_is_taken_without_waiting() -> None:
    """Below its size the gate lets calls in at once and counts no wait."""
    gate = Gate(2, wait=1.0)
    async with guard("op", 1.0, gate), guard("op", 1.0, gate):
        assert gate.busy == 2
    assert (gate.busy, gate.waited, gate.gave_up) == (0, 0, 0)


async def test_callers_past_the_size_wait_in_turn_and_all_get_through() -> None:
    """Ten calls on a gate of two: never more than two inside, every one of them runs."""
    gate = Gate(2, wait=5.0)
    inside = 0
    most = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal inside, most
        async with guard("op", 5.0, gate):
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call()) for _ in range(10)]
    await asyncio.sleep(0)  # every task reaches the gate
    assert (gate.busy, gate.waited) == (2, 8)
    release.set()
    await asyncio.gather(*tasks)
    assert (most, gate.busy, gate.gave_up) == (2, 0, 0)


async def test_a_wait_past_the_queue_timeout_is_an_overloaded_backend_error() -> None:
    """A caller that cannot get a connection in time gets BackendError(overloaded=True), and the
    store's own deadline never started."""
    gate = Gate(1, wait=0.001)
    held = asyncio.Event()
    done = asyncio.Event()

    async def holder() -> None:
        async with guard("hold", 5.0, gate):
            held.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    with pytest.raises(BackendError) as raised:
        async with guard("acquire", 5.0, gate):
            pytest.fail("let in past a full gate")
    done.set()
    await task
    assert raised.value.overloaded and isinstance(raised.value.cause, Overloaded)
    assert (gate.gave_up, gate.busy) == (1, 0)


async def test_a_failing_call_gives_its_slot_back() -> None:
    """A driver error inside the guard still frees the slot."""
    gate = Gate(1, wait=1.0)
    with pytest.raises(BackendError):
        async with guard("op", 1.0, gate):
            raise ConnectionError("refused")
    assert gate.busy == 0


class OverloadedStore:
    """A bucket store whose every call waited too long at the gate."""

    async def acquire(self, *args: object, **kwargs: object) -> object:
        raise BackendError("redis", "acquire", Overloaded("no connection"), overloaded=True)

    async def close(self) -> None:
        return None


async def test_back_pressure_fails_one_call_over_but_never_marks_the_store_degraded(clock: FakeClock) -> None:
    """An overloaded call is answered by the tenant's rule, and the limiter stays healthy: a queue
    at the gate says nothing about Redis (nor about any other tenant)."""
    limiter = FailoverLimiter(OverloadedStore(), MemoryBuckets(clock))  # type: ignore[arg-type]
    told: list[bool] = []
    limiter.on_transition(lambda degraded, _error: told.append(degraded))
    rule = Rule("webhooks", 1, 1.0, 1)
    assert (await limiter.acquire("acme", [rule], mode="closed")).allowed is False
    assert (await limiter.acquire("acme", [rule], mode="local")).allowed is True
    assert not limiter.degraded and told == []
