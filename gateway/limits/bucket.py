"""Pure token-bucket maths, in GCRA form: a bucket is one number, the time it will be full again.

Holding "theoretical arrival time" (tat) instead of (tokens, last_refill) gives the same
admissions as a classic token bucket, but one float per bucket, and "full again" is simply
`tat <= now`, so idle buckets can be evicted (memory) or expired (Redis PEXPIREAT) exactly.
The Lua script in redis_bucket.lua repeats these steps operation for operation; the contract
suite in tests/integration/limits checks that both agree.

With T = per / rate (seconds per token) and tau = burst * T (how far ahead tat may run):
    tat      = max(stored tat, now)            # a missing bucket is full: tat = now
    new_tat  = tat + cost * T
    allow_at = new_tat - tau
    free     = (now - allow_at) / T              # whole tokens to spare after this charge
    allowed  = free >= -EPSILON
    remaining (allowed) = floor(free + EPSILON)
    retry_after (refused) = allow_at - now
    reset = (new_tat if allowed else tat) - now
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.limits.base import Decision, Rule

# Absorbs float rounding in tat, which accumulates T many times: 2.9999999 tokens count as 3.
# A millionth of a token: with time.monotonic() at weeks of uptime (~2e6 s) a double resolves
# ~5e-10 s, which is already 5e-7 tokens of a 1000/s rule; no real charge is that fine.
EPSILON = 1e-6


def take(
    tats: Sequence[float | None], rules: Sequence[Rule], now: float, cost: int = 1
) -> tuple[list[float | None], Decision]:
    """Charge `cost` to every bucket, all or nothing.

    Returns the new tats (unchanged when refused) and one Decision: when refused, the refusing
    bucket that frees up last; when allowed, the bucket with the fewest tokens left.
    """
    # Track the winner as plain values and build one Decision at the end: this runs per request.
    refused_at = -1
    refused_retry = refused_reset = 0.0
    tightest_at = -1
    tightest_remaining = 0
    tightest_reset = 0.0
    new_tats: list[float | None] = []
    for i, (stored, rule) in enumerate(zip(tats, rules, strict=True)):
        interval = rule.interval
        tat = now if stored is None or stored < now else stored
        new_tat = tat + cost * interval
        allow_at = new_tat - rule.burst * interval
        free = (now - allow_at) / interval
        if free < -EPSILON:
            retry_after = allow_at - now
            if refused_at < 0 or retry_after > refused_retry:
                refused_at, refused_retry, refused_reset = i, retry_after, tat - now
            new_tats.append(stored)
            continue
        remaining = math.floor(free + EPSILON)
        if tightest_at < 0 or remaining < tightest_remaining:
            tightest_at, tightest_remaining, tightest_reset = i, remaining, new_tat - now
        new_tats.append(new_tat)
    if refused_at >= 0:
        return list(tats), Decision(False, 0, refused_retry, refused_reset, rules[refused_at])
    assert tightest_at >= 0, "take() needs at least one rule"
    return new_tats, Decision(True, tightest_remaining, 0.0, tightest_reset, rules[tightest_at])


def is_full(tat: float | None, now: float) -> bool:
    """A bucket whose tat has passed holds `burst` tokens: its state can be forgotten."""
    return tat is None or tat <= now
