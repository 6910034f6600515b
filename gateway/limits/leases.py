"""Concurrency limits (calls, streams at once) as expiring leases.

A slot is a lease with a TTL that its holder renews (heartbeats) while it holds it, so a holder
that crashes without releasing gives its slot back at the TTL, not never. One protocol, two
stores: in process (clock injected) and Redis (one ZSET per tenant and kind, one atomic script).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.clock import Clock, Sleep, monotonic
from gateway.errors import BackendError
from gateway.limits.redis_client import RedisClient, guard, lua, now_arg

log = logging.getLogger(__name__)

LEASE_SCRIPT = "redis_leases.lua"


@dataclass(frozen=True, slots=True)
class Lease:
    """One held slot of `limit` slots of `kind` (e.g. concurrent_streams) for `tenant`."""

    tenant: str
    kind: str
    id: str
    limit: int
    ttl: float


class LeaseStore(Protocol):
    async def acquire(self, tenant: str, kind: str, limit: int, ttl: float, *, id: str | None = None) -> Lease | None:
        """A new lease for `ttl` seconds, or None when `limit` leases are live already.

        id: the lease's id (default: a new random one). A live lease of that id is extended
        rather than taken twice: a retried request that names its lease holds one slot."""
        ...

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease by its ttl. A lease that expired (or was lost) is taken again if a
        slot is free; False when it is not, and the holder is over the limit."""
        ...

    async def claim(self, lease: Lease) -> bool:
        """Mark a live lease as taken by its one holder, and extend it by its ttl: the first
        claim of a lease succeeds, every later one (a replay) is False, as is a claim of a lease
        that is not live (released, expired, never held)."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def count(self, tenant: str, kind: str) -> int:
        """Leases live now."""
        ...

    async def close(self) -> None: ...


def _new_id() -> str:
    return uuid.uuid4().hex


class MemoryLeases:
    """Leases of one process: exact, no I/O."""

    def __init__(self, clock: Clock = monotonic) -> None:
        self._clock = clock
        self._held: dict[tuple[str, str], dict[str, float]] = {}
        self._claimed: set[tuple[str, str, str]] = set()

    def _live(self, tenant: str, kind: str, now: float) -> dict[str, float]:
        held = self._held.setdefault((tenant, kind), {})
        for lease_id in [i for i, expiry in held.items() if expiry <= now]:
            del held[lease_id]
            self._claimed.discard((tenant, kind, lease_id))
        return held

    def _hold(self, tenant: str, kind: str, lease_id: str, limit: int, ttl: float) -> bool:
        now = self._clock()
        held = self._live(tenant, kind, now)
        if lease_id not in held and len(held) >= limit:
            return False
        held[lease_id] = now + ttl
        return True

    async def acquire(self, tenant: str, kind: str, limit: int, ttl: float, *, id: str | None = None) -> Lease | None:
        lease = Lease(tenant, kind, _new_id() if id is None else id, limit, ttl)
        return lease if self._hold(tenant, kind, lease.id, limit, ttl) else None

    async def renew(self, lease: Lease) -> bool:
        return self._hold(lease.tenant, lease.kind, lease.id, lease.limit, lease.ttl)

    async def claim(self, lease: Lease) -> bool:
        held = self._live(lease.tenant, lease.kind, self._clock())
        marker = (lease.tenant, lease.kind, lease.id)
        if lease.id not in held or marker in self._claimed:
            return False
        self._claimed.add(marker)
        held[lease.id] = self._clock() + lease.ttl
        return True

    async def release(self, lease: Lease) -> None:
        self._claimed.discard((lease.tenant, lease.kind, lease.id))
        held = self._held.get((lease.tenant, lease.kind))
        if held is not None:
            held.pop(lease.id, None)
            if not held:
                del self._held[(lease.tenant, lease.kind)]

    async def count(self, tenant: str, kind: str) -> int:
        held = self._live(tenant, kind, self._clock())
        if not held:
            del self._held[(tenant, kind)]
        return len(held)

    async def close(self) -> None:
        self._held.clear()
        self._claimed.clear()


def lease_key(tenant: str, kind: str) -> str:
    return f"sy:{{{tenant}}}:l:{kind}"


def claimed_key(tenant: str, kind: str) -> str:
    """The SET of the leases of `lease_key` that were claimed (same hash slot)."""
    return f"sy:{{{tenant}}}:l:{kind}:c"


class RedisLeases:
    """Leases shared by every instance; clock None reads Redis TIME (tests inject one)."""

    def __init__(self, client: RedisClient, *, clock: Clock | None = None, deadline: float = 0.050) -> None:
        self._client = client
        self._clock = clock
        self._deadline = deadline
        self._script = client.register_script(lua(LEASE_SCRIPT))

    async def _run(self, operation: str, tenant: str, kind: str, *args: str | int | float) -> int:
        now = now_arg(None if self._clock is None else self._clock())
        async with guard(f"lease {operation}", self._deadline):
            reply = await self._script(
                keys=[lease_key(tenant, kind), claimed_key(tenant, kind)],
                args=[now, operation, *args],
                client=self._client,
            )
        return int(reply)

    async def acquire(self, tenant: str, kind: str, limit: int, ttl: float, *, id: str | None = None) -> Lease | None:
        lease = Lease(tenant, kind, _new_id() if id is None else id, limit, ttl)
        return lease if await self.renew(lease) else None

    async def claim(self, lease: Lease) -> bool:
        return await self._run("claim", lease.tenant, lease.kind, lease.id, lease.limit, repr(lease.ttl)) == 1

    async def renew(self, lease: Lease) -> bool:
        held = await self._run("hold", lease.tenant, lease.kind, lease.id, lease.limit, repr(lease.ttl))
        return held == 1

    async def release(self, lease: Lease) -> None:
        await self._run("release", lease.tenant, lease.kind, lease.id)

    async def count(self, tenant: str, kind: str) -> int:
        return await self._run("count", tenant, kind, "")

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""


@asynccontextmanager
async def hold(
    store: LeaseStore,
    tenant: str,
    kind: str,
    limit: int,
    ttl: float,
    *,
    sleep: Sleep = asyncio.sleep,
) -> AsyncIterator[Lease | None]:
    """Hold a lease for the block, renewing it every ttl/3 in the background, releasing it on
    exit. Yields None when no slot is free. BackendError on acquiring propagates."""
    lease = await store.acquire(tenant, kind, limit, ttl)
    if lease is None:
        yield None
        return
    beats = asyncio.create_task(heartbeat(store, lease, sleep))
    try:
        yield lease
    finally:
        beats.cancel()
        try:
            await store.release(lease)
        except BackendError as error:
            # The slot comes back at the TTL anyway: that is what the TTL is for.
            log.warning("lease %s of %s/%s not released: %s", lease.id, tenant, kind, error)


async def heartbeat(store: LeaseStore, lease: Lease, sleep: Sleep = asyncio.sleep) -> None:
    """Renew `lease` every ttl/3 until cancelled (a lost renewal is logged, not fatal)."""
    # Three beats per TTL: a lease survives two lost heartbeats in a row.
    while True:
        await sleep(lease.ttl / 3)
        try:
            if not await store.renew(lease):
                log.warning("lease %s of %s/%s lost: over the limit", lease.id, lease.tenant, lease.kind)
        except BackendError as error:
            log.warning("lease %s of %s/%s not renewed: %s", lease.id, lease.tenant, lease.kind, error)
