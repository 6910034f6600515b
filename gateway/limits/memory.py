"""In-process limit store over bucket.py: exact for one process, no I/O, clock injected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.clock import Clock, monotonic
from gateway.limits import bucket
from gateway.limits.base import DEDUP_TTL, MAX_RETRY_TOKEN, Admit, Decision, RetryKey, Rule

if TYPE_CHECKING:
    from gateway.limits.budget import BudgetCharge

# Sweeping every N charges keeps the cost per request O(1) on average while bounding memory
# to the buckets touched since the last sweep that are not yet full again.
SWEEP_EVERY = 4096


class MemoryBuckets:
    """Buckets keyed by (tenant, rule name); a bucket that is full again is forgotten."""

    def __init__(self, clock: Clock = monotonic, dedup_ttl: float = DEDUP_TTL) -> None:
        self._clock = clock
        self._dedup_ttl = dedup_ttl
        self._tats: dict[tuple[str, str], float] = {}
        # Retry tokens ("tenant\0token" -> the binding of the request first admitted with it) live
        # in two generations of plain dicts, each spanning half the TTL: a token is remembered
        # between ttl/2 and ttl, and forgetting is dropping the older dict whole, never deleting
        # an entry. A dict of expiry times with one insert and one delete per request was measured
        # stalling the loop for milliseconds at a time as it rebuilt itself around deleted slots.
        self._seen: dict[str, str] = {}
        self._seen_before: dict[str, str] = {}
        self._generation_ends = clock() + dedup_ttl / 2
        self._charges = 0

    async def acquire(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        *,
        budget: BudgetCharge | None = None,
    ) -> Decision:
        if budget is not None:
            raise TypeError("the in-process store charges a budget through acquire_now(admit=...)")
        return self.acquire_now(tenant, rules, cost, retry)

    def acquire_now(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        admit: Admit | None = None,
    ) -> Decision:
        """The synchronous core of acquire(), for callers that must not yield (fallbacks).

        admit: the budget's say, asked once the buckets would admit a charge (not a replay) and
        before anything is written; False leaves the buckets and the token as they were."""
        now = self._clock()
        self._charges += 1
        if self._charges >= SWEEP_EVERY:
            self.sweep(now)
        keys = [(tenant, rule.name) for rule in rules]
        tats = [self._tats.get(key) for key in keys]
        seen_key = None  # set when the token is new: remembered if this charge is admitted
        binding = ""
        mismatch = False
        if retry is not None and len(retry.token) <= MAX_RETRY_TOKEN:
            if now >= self._generation_ends:
                self._next_generation(now)
            token_key = f"{tenant}\x00{retry.token}"
            first = self._seen.get(token_key)
            if first is None:
                first = self._seen_before.get(token_key)
            if first is None:
                seen_key, binding = token_key, retry.binding
            elif first == retry.binding:
                # A retry of a request already admitted: report, but do not charge again.
                return replace(bucket.take(tats, rules, now, 0)[1], retry="replay")
            else:
                # Another request under an admitted token: charged like any request, and the
                # token stays the first admitted request's, whatever this charge's outcome.
                mismatch = True
        new_tats, decision = bucket.take(tats, rules, now, cost)
        if decision.allowed:
            if admit is not None:
                if not admit(None):
                    return replace(decision, budget="over", retry="mismatch" if mismatch else "new")
                decision = replace(decision, budget="charged")
            for key, tat in zip(keys, new_tats, strict=True):
                if tat is not None:
                    self._tats[key] = tat
            if seen_key is not None and cost > 0:  # as redis_bucket.lua: a free charge claims no token
                self._seen[seen_key] = binding
        return replace(decision, retry="mismatch") if mismatch else decision

    def _next_generation(self, now: float) -> None:
        half = self._dedup_ttl / 2
        # After a silence longer than a generation, the current one is too old to keep as well.
        self._seen_before = self._seen if now < self._generation_ends + half else {}
        self._seen = {}
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
