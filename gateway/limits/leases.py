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
from gateway.limits.redis_client import RedisClient, gate_of, guard, lua, now_arg

log = logging.getLogger(__name__)

LEASE_SCRIPT = "redis_leases.lua"


@dataclass(frozen=True, slots=True)
class Lease:
    """One held slot of `limit` slots of `kind` (e.g. concurrent_streams) for `tenant`.

    fresh: from acquire(), False when a live lease of that id was only extended (the slot was
    someone else's first: whoever only extended it must not give it back)."""

    tenant: str
    kind: str
    id: str
    limit: int
    ttl: float
    fresh: bool = True


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

    async def claim(self, pending: Lease, id: str, ttl: float, window: float) -> Lease | None:
        """Move the slot `pending` holds to a lease of its own named `id`, for `ttl`, once per
        id: None if `id` was claimed within the last `window` seconds (a replay), or if
        `pending` is not live any more (lapsed, lost with a restarted store) and no slot is
        free. `pending` stops counting: the id it had is free for another holder at once."""
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
        # (tenant, kind, claimed id) -> until when it is remembered. Callers claim with one
        # window, so insertion order is expiry order: pruning stops at the first live id.
        self._claimed: dict[tuple[str, str, str], float] = {}

    def _live(self, tenant: str, kind: str, now: float) -> dict[str, float]:
        held = self._held.setdefault((tenant, kind), {})
        for lease_id in [i for i, expiry in held.items() if expiry <= now]:
            del held[lease_id]
        return held

    def _hold(self, tenant: str, kind: str, lease_id: str, limit: int, ttl: float) -> int:
        """0: refused (full); 1: a live lease extended; 2: a lease taken."""
        now = self._clock()
        held = self._live(tenant, kind, now)
        extended = lease_id in held
        if not extended and len(held) >= limit:
            return 0
        held[lease_id] = now + ttl
        return 1 if extended else 2

    async def acquire(self, tenant: str, kind: str, limit: int, ttl: float, *, id: str | None = None) -> Lease | None:
        lease_id = _new_id() if id is None else id
        taken = self._hold(tenant, kind, lease_id, limit, ttl)
        return Lease(tenant, kind, lease_id, limit, ttl, fresh=taken == 2) if taken else None

    async def renew(self, lease: Lease) -> bool:
        return self._hold(lease.tenant, lease.kind, lease.id, lease.limit, lease.ttl) > 0

    async def claim(self, pending: Lease, id: str, ttl: float, window: float) -> Lease | None:
        now = self._clock()
        while self._claimed:
            oldest, until = next(iter(self._claimed.items()))
            if until > now:
                break
            del self._claimed[oldest]
        marker = (pending.tenant, pending.kind, id)
        if marker in self._claimed:
            return None
        self._claimed[marker] = now + window
        held = self._live(pending.tenant, pending.kind, now)
        if held.pop(pending.id, None) is None and len(held) >= pending.limit:
            return None
        held[id] = now + ttl
        return Lease(pending.tenant, pending.kind, id, pending.limit, ttl)

    async def release(self, lease: Lease) -> None:
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

    def sweep(self) -> int:
        """Forget the leases that lapsed and the tenants that hold none; returns how many went."""
        now = self._clock()
        dropped = 0
        for key in list(self._held):
            held = self._held[key]
            lapsed = [lease_id for lease_id, expiry in held.items() if expiry <= now]
            for lease_id in lapsed:
                del held[lease_id]
            dropped += len(lapsed)
            if not held:
                del self._held[key]
        return dropped

    async def close(self) -> None:
        self._held.clear()
        self._claimed.clear()


def lease_key(tenant: str, kind: str) -> str:
    return f"sy:{{{tenant}}}:l:{kind}"


def claimed_key(tenant: str, kind: str) -> str:
    """The ids claimed of `lease_key`'s kind, remembered for their window (same hash slot)."""
    return f"sy:{{{tenant}}}:l:{kind}:c"


class RedisLeases:
    """Leases shared by every instance; clock None reads Redis TIME (tests inject one)."""

    def __init__(self, client: RedisClient, *, clock: Clock | None = None, deadline: float = 0.050) -> None:
        self._client = client
        self._gate = gate_of(client)
        self._clock = clock
        self._deadline = deadline
        self._script = client.register_script(lua(LEASE_SCRIPT))

    async def _run(self, operation: str, tenant: str, kind: str, *args: str | int | float) -> int:
        now = now_arg(None if self._clock is None else self._clock())
        async with guard(f"lease {operation}", self._deadline, self._gate):
            reply = await self._script(
                keys=[lease_key(tenant, kind), claimed_key(tenant, kind)],
                args=[now, operation, *args],
                client=self._client,
            )
        return int(reply)

    async def acquire(self, tenant: str, kind: str, limit: int, ttl: float, *, id: str | None = None) -> Lease | None:
        lease_id = _new_id() if id is None else id
        taken = await self._run("hold", tenant, kind, lease_id, limit, repr(ttl))
        return Lease(tenant, kind, lease_id, limit, ttl, fresh=taken == 2) if taken else None

    async def claim(self, pending: Lease, id: str, ttl: float, window: float) -> Lease | None:
        claimed = await self._run(
            "claim", pending.tenant, pending.kind, id, pending.limit, repr(ttl), pending.id, repr(window)
        )
        return Lease(pending.tenant, pending.kind, id, pending.limit, ttl) if claimed else None

    async def renew(self, lease: Lease) -> bool:
        return await self._run("hold", lease.tenant, lease.kind, lease.id, lease.limit, repr(lease.ttl)) > 0

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
