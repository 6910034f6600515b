"""In-process limit store over bucket.py: exact for one process, no I/O, clock injected."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from gateway.clock import Clock, monotonic
from gateway.limits import bucket
from gateway.limits.base import DEDUP_TTL, Decision, Rule

# Sweeping every N charges keeps the cost per request O(1) on average while bounding memory
# to the buckets touched since the last sweep that are not yet full again.
SWEEP_EVERY = 4096


class MemoryLimiter:
    """Buckets keyed by (tenant, rule name); a bucket that is full again is forgotten."""

    def __init__(self, clock: Clock = monotonic, dedup_ttl: float = DEDUP_TTL) -> None:
        self._clock = clock
        self._dedup_ttl = dedup_ttl
        self._tats: dict[tuple[str, str], float] = {}
        # Every token gets the same TTL, so tokens expire in the order they arrive: the deque
        # lets a sweep drop them from the front in O(expired), never scanning the live ones.
        self._seen: dict[tuple[str, str], float] = {}
        self._seen_order: deque[tuple[float, tuple[str, str]]] = deque()
        self._charges = 0

    async def acquire(
        self, tenant: str, rules: Sequence[Rule], cost: int = 1, dedup_key: str | None = None
    ) -> Decision:
        return self.acquire_now(tenant, rules, cost, dedup_key)

    def acquire_now(self, tenant: str, rules: Sequence[Rule], cost: int = 1, dedup_key: str | None = None) -> Decision:
        """The synchronous core of acquire(), for callers that must not yield (fallbacks)."""
        now = self._clock()
        self._charges += 1
        if self._charges >= SWEEP_EVERY:
            self.sweep(now)
        keys = [(tenant, rule.name) for rule in rules]
        tats = [self._tats.get(key) for key in keys]
        seen_key = (tenant, dedup_key) if dedup_key is not None else None
        if seen_key is not None:
            seen_until = self._seen.get(seen_key)
            if seen_until is not None and seen_until > now:
                # A retry of a request already admitted: report, but do not charge again.
                return bucket.take(tats, rules, now, 0)[1]
        new_tats, decision = bucket.take(tats, rules, now, cost)
        if decision.allowed:
            for key, tat in zip(keys, new_tats, strict=True):
                if tat is not None:
                    self._tats[key] = tat
            if seen_key is not None:
                until = now + self._dedup_ttl
                self._seen[seen_key] = until
                self._seen_order.append((until, seen_key))
        return decision

    def sweep(self, now: float | None = None) -> int:
        """Forget full buckets and expired dedup keys; returns how many entries were dropped."""
        now = self._clock() if now is None else now
        self._charges = 0
        full = [key for key, tat in self._tats.items() if tat <= now]
        for key in full:
            del self._tats[key]
        expired = 0
        order, seen = self._seen_order, self._seen
        while order and order[0][0] <= now:
            until, key = order.popleft()
            if seen.get(key) == until:
                del seen[key]
                expired += 1
        return len(full) + expired

    def __len__(self) -> int:
        return len(self._tats)

    async def close(self) -> None:
        self._tats.clear()
        self._seen.clear()
        self._seen_order.clear()
