"""In-process limit store over bucket.py: exact for one process, no I/O, clock injected."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.clock import Clock, monotonic
from gateway.limits import bucket
from gateway.limits.base import DEDUP_TTL, Decision, Rule

# Sweeping every N charges keeps the cost per request O(1) on average while bounding memory
# to the buckets touched since the last sweep that are not yet full again.
SWEEP_EVERY = 4096


class MemoryBuckets:
    """Buckets keyed by (tenant, rule name); a bucket that is full again is forgotten."""

    def __init__(self, clock: Clock = monotonic, dedup_ttl: float = DEDUP_TTL) -> None:
        self._clock = clock
        self._dedup_ttl = dedup_ttl
        self._tats: dict[tuple[str, str], float] = {}
        # Retry tokens live in two generations of plain sets, each spanning half the TTL: a token
        # is remembered between ttl/2 and ttl, and forgetting is dropping the older set whole.
        # A dict of expiry times with one insert and one delete per request was measured stalling
        # the loop for milliseconds at a time as it rebuilt itself around the deleted slots.
        self._seen: set[str] = set()
        self._seen_before: set[str] = set()
        self._generation_ends = clock() + dedup_ttl / 2
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
        seen_key = None
        if dedup_key is not None:
            if now >= self._generation_ends:
                self._next_generation(now)
            seen_key = f"{tenant}\x00{dedup_key}"
            if seen_key in self._seen or seen_key in self._seen_before:
                # A retry of a request already admitted: report, but do not charge again.
                return bucket.take(tats, rules, now, 0)[1]
        new_tats, decision = bucket.take(tats, rules, now, cost)
        if decision.allowed:
            for key, tat in zip(keys, new_tats, strict=True):
                if tat is not None:
                    self._tats[key] = tat
            if seen_key is not None:
                self._seen.add(seen_key)
        return decision

    def _next_generation(self, now: float) -> None:
        half = self._dedup_ttl / 2
        # After a silence longer than a generation, the current set is too old to keep as well.
        self._seen_before = self._seen if now < self._generation_ends + half else set()
        self._seen = set()
        self._generation_ends = now + half

    def sweep(self, now: float | None = None) -> int:
        """Forget buckets that are full again; returns how many were dropped."""
        now = self._clock() if now is None else now
        self._charges = 0
        full = [key for key, tat in self._tats.items() if tat <= now]
        for key in full:
            del self._tats[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._tats)

    async def close(self) -> None:
        self._tats.clear()
        self._seen.clear()
        self._seen_before.clear()
