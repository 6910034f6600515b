"""Rate-limit response headers: the IETF httpapi draft-11 structured fields, and the legacy triple.

A token bucket maps onto the draft's quota/window as q = burst and w = the seconds it takes to
refill a whole burst, so `r` (remaining) never exceeds `q` and `t` counts down to a full bucket.
"""

from __future__ import annotations

import math

from gateway.limits.base import Decision

# Whole seconds are rounded up, less this: 10 tokens at 0.2 s each is 2.0000000000000004 s in
# floats, which must say 2, not 3 (a `t` past `w`).
EPSILON = 1e-9


def _seconds(value: float) -> int:
    return math.ceil(value - EPSILON)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    rule = decision.rule
    window = max(1, _seconds(rule.burst * rule.interval))
    reset = max(0, _seconds(decision.reset))
    headers = {
        "RateLimit-Policy": f'"{rule.name}";q={rule.burst};w={window}',
        "RateLimit": f'"{rule.name}";r={decision.remaining};t={reset}',
        "X-RateLimit-Limit": str(rule.burst),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(reset),
    }
    if not decision.allowed:
        # Retry-After is whole seconds (RFC 9110); round up so a client never comes back early.
        headers["Retry-After"] = str(max(1, _seconds(decision.retry_after)))
    return headers
