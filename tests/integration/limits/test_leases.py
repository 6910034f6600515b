"""Concurrency leases on every backend: the limit holds, release frees, an unrenewed lease expires."""

from __future__ import annotations

import asyncio

from gateway.limits.factory import Stores
from gateway.limits.leases import Lease, hold
from tests.support.clock import FakeClock
from tests.support.sleeper import ManualSleep

TTL = 30.0
WINDOW = 60.0


async def test_limit_is_honored(stores: Stores) -> None:
    """With limit 2, the third lease is refused; other tenants and kinds are apart."""
    leases = stores.leases
    taken = [await leases.acquire("acme", "concurrent_calls", 2, TTL) for _ in range(3)]
    assert [lease is not None for lease in taken] == [True, True, False]
    assert await leases.acquire("acme", "concurrent_streams", 2, TTL) is not None
    assert await leases.acquire("other", "concurrent_calls", 2, TTL) is not None
    assert await leases.count("acme", "concurrent_calls") == 2


async def test_release_frees_a_slot(stores: Stores) -> None:
    """A released lease's slot is free at once, and releasing twice is harmless."""
    leases = stores.leases
    first = await leases.acquire("acme", "concurrent_calls", 1, TTL)
    assert first is not None
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is None
    await leases.release(first)
    await leases.release(first)
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is not None


async def test_unrenewed_lease_expires_after_its_ttl(stores: Stores, clock: FakeClock) -> None:
    """A holder that never renews (it crashed) loses its slot at the TTL, not before."""
    leases = stores.leases
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is not None
    clock.advance(TTL - 0.001)
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is None
    clock.advance(0.001)
    assert await leases.count("acme", "concurrent_calls") == 0
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is not None


async def test_renewal_keeps_a_lease(stores: Stores, clock: FakeClock) -> None:
    """Renewed every ttl/3, a lease outlives its TTL many times over."""
    leases = stores.leases
    lease = await leases.acquire("acme", "concurrent_calls", 1, TTL)
    assert lease is not None
    for _ in range(9):
        clock.advance(TTL / 3)
        assert await leases.renew(lease)
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is None


async def test_expired_lease_renews_only_into_a_free_slot(stores: Stores, clock: FakeClock) -> None:
    """A lease renewed too late is taken again if a slot is free, refused if someone took it."""
    leases = stores.leases
    late = await leases.acquire("acme", "concurrent_calls", 1, TTL)
    assert late is not None
    clock.advance(TTL)
    assert await leases.renew(late)
    clock.advance(TTL)
    assert await leases.acquire("acme", "concurrent_calls", 1, TTL) is not None
    assert not await leases.renew(late)


async def test_hold_heartbeats_and_releases(stores: Stores, clock: FakeClock) -> None:
    """hold() renews in the background while the block runs and frees the slot on exit."""
    sleep = ManualSleep(clock)
    async with hold(stores.leases, "acme", "concurrent_streams", 1, TTL, sleep=sleep) as lease:
        assert lease is not None
        for _ in range(6):  # two TTLs of heartbeats
            await sleep.tick()
        assert sleep.seconds == TTL / 3
        assert await stores.leases.acquire("acme", "concurrent_streams", 1, TTL) is None
    await asyncio.sleep(0)
    assert await stores.leases.count("acme", "concurrent_streams") == 0


async def test_hold_yields_none_when_full(stores: Stores) -> None:
    """hold() on a full kind yields None and leaves the holders alone."""
    assert await stores.leases.acquire("acme", "concurrent_calls", 1, TTL) is not None
    async with hold(stores.leases, "acme", "concurrent_calls", 1, TTL) as lease:
        assert lease is None
    assert await stores.leases.count("acme", "concurrent_calls") == 1


async def test_a_named_lease_is_held_once(stores: Stores) -> None:
    """Acquiring a live lease by its id again extends it (not fresh): a retried request takes no second slot."""
    leases = stores.leases
    first = await leases.acquire("acme", "concurrent_streams", 2, TTL, id="CA1")
    again = await leases.acquire("acme", "concurrent_streams", 2, TTL, id="CA1")
    assert first is not None and again is not None and again.id == first.id == "CA1"
    assert (first.fresh, again.fresh) == (True, False)
    assert await leases.count("acme", "concurrent_streams") == 1
    assert await leases.acquire("acme", "concurrent_streams", 2, TTL) is not None


async def test_a_claim_moves_the_pending_slot_to_its_own_lease(stores: Stores, clock: FakeClock) -> None:
    """The claimed lease takes the pending one's slot (one slot, not two), lives its own ttl, and
    the pending id is free again: a later admission of the same call takes a slot of its own."""
    leases = stores.leases
    pending = await leases.acquire("acme", "concurrent_streams", 2, TTL, id="CA1")
    assert pending is not None
    claimed = await leases.claim(pending, "n1", 2 * TTL, WINDOW)
    assert claimed is not None and (claimed.id, claimed.ttl) == ("n1", 2 * TTL)
    assert await leases.count("acme", "concurrent_streams") == 1
    clock.advance(TTL)  # the pending lease's ttl: the claimed one lives on
    assert await leases.count("acme", "concurrent_streams") == 1
    again = await leases.acquire("acme", "concurrent_streams", 2, TTL, id="CA1")
    assert again is not None and again.fresh
    assert await leases.acquire("acme", "concurrent_streams", 2, TTL) is None
    await leases.release(claimed)  # the first stream ends: the second admission keeps its slot
    assert await leases.claim(again, "n2", TTL, WINDOW) is not None


async def test_an_id_is_claimed_once_within_its_window(stores: Stores, clock: FakeClock) -> None:
    """A second claim of the same id is refused, even after its lease was released (a replay
    of a stream that ended), until the window passes."""
    leases = stores.leases
    pending = await leases.acquire("acme", "concurrent_streams", 2, TTL, id="CA1")
    assert pending is not None
    claimed = await leases.claim(pending, "n1", TTL, WINDOW)
    assert claimed is not None
    assert await leases.claim(pending, "n1", TTL, WINDOW) is None
    await leases.release(claimed)
    assert await leases.claim(pending, "n1", TTL, WINDOW) is None
    assert await leases.count("acme", "concurrent_streams") == 0
    clock.advance(WINDOW)
    assert await leases.claim(pending, "n1", TTL, WINDOW) is not None


async def test_a_lapsed_pending_lease_is_claimed_into_a_free_slot_only(stores: Stores, clock: FakeClock) -> None:
    """A pending lease lost or expired before its claim: the claim takes a free slot, and is
    refused (its id spent) when there is none."""
    leases = stores.leases
    pending = await leases.acquire("acme", "concurrent_streams", 1, TTL, id="CA1")
    assert pending is not None
    clock.advance(TTL)
    assert await leases.claim(pending, "n1", TTL, WINDOW) is not None
    other = Lease("acme", "concurrent_streams", "CA2", 1, TTL)
    assert await leases.claim(other, "n2", TTL, WINDOW) is None
    assert await leases.count("acme", "concurrent_streams") == 1
