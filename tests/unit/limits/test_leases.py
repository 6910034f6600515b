"""Leases in process, and hold()'s heartbeat when the store misbehaves."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.errors import BackendError
from gateway.limits.leases import Lease, MemoryLeases, hold
from tests.support.clock import FakeClock
from tests.support.sleeper import ManualSleep

TTL = 30.0


class FailingLeases(MemoryLeases):
    """Memory leases whose renew/release fail or refuse on demand."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.renew_error = False
        self.renew_refused = False
        self.release_error = False
        self.renewals = 0

    async def renew(self, lease: Lease) -> bool:
        self.renewals += 1
        if self.renew_error:
            raise BackendError("redis", "lease hold", ConnectionError("down"))
        if self.renew_refused:
            return False
        return await super().renew(lease)

    async def release(self, lease: Lease) -> None:
        if self.release_error:
            raise BackendError("redis", "lease release", ConnectionError("down"))
        await super().release(lease)


async def test_expired_leases_are_forgotten(clock: FakeClock) -> None:
    """Memory does not grow with leases nobody released: expired ones go on the next look."""
    leases = MemoryLeases(clock)
    for tenant in ("a", "b"):
        await leases.acquire(tenant, "concurrent_calls", 5, TTL)
    clock.advance(TTL)
    assert await leases.count("a", "concurrent_calls") == 0
    assert await leases.count("b", "concurrent_calls") == 0
    assert not leases._held


async def test_heartbeat_survives_store_errors(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A failed renewal is logged and retried at the next beat; the block is not disturbed."""
    store = FailingLeases(clock)
    sleep = ManualSleep(clock)
    async with hold(store, "acme", "concurrent_streams", 1, TTL, sleep=sleep) as lease:
        assert lease is not None
        store.renew_error = True
        await sleep.tick()
        store.renew_error = False
        await sleep.tick()
        assert store.renewals == 2
    assert "not renewed" in caplog.text


async def test_lost_lease_is_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A renewal refused (the slot went to someone else) is logged as lost."""
    store = FailingLeases(clock)
    sleep = ManualSleep(clock)
    with caplog.at_level(logging.WARNING):
        async with hold(store, "acme", "concurrent_streams", 1, TTL, sleep=sleep):
            store.renew_refused = True
            await sleep.tick()
    assert "lost" in caplog.text


async def test_release_failure_does_not_escape(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """If releasing fails, hold() logs it: the TTL returns the slot anyway."""
    store = FailingLeases(clock)
    store.release_error = True
    async with hold(store, "acme", "concurrent_calls", 1, TTL):
        pass
    assert "not released" in caplog.text


async def test_body_error_still_releases(clock: FakeClock) -> None:
    """An exception in the block propagates, and the lease is released all the same."""
    store = MemoryLeases(clock)
    with pytest.raises(RuntimeError, match="call failed"):
        async with hold(store, "acme", "concurrent_calls", 1, TTL):
            raise RuntimeError("call failed")
    assert await store.count("acme", "concurrent_calls") == 0


async def test_heartbeat_stops_on_exit(clock: FakeClock) -> None:
    """After the block, no heartbeat task is left running."""
    store = MemoryLeases(clock)
    before = asyncio.all_tasks()
    async with hold(store, "acme", "concurrent_calls", 1, TTL):
        assert len(asyncio.all_tasks() - before) == 1
    await asyncio.sleep(0)
    assert not (asyncio.all_tasks() - before)
