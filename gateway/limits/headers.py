"""Rate-limit response headers: the IETF httpapi draft-11 structured fields, and the legacy triple.

A token bucket maps onto the draft's quota/window as q = burst and w = the seconds it takes to
refill a whole burst, so `r` (remaining) never exceeds `q` and `t` counts down to a full bucket.
"""

from __future__ import annotations

import math

from gateway.limits.base import Decision


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    rule = decision.rule
    window = max(1, math.ceil(rule.burst * rule.interval))
    reset = max(0, math.ceil(decision.reset))
    headers = {
        "RateLimit-Policy": f'"{rule.name}";q={rule.burst};w={window}',
        "RateLimit": f'"{rule.name}";r={decision.remaining};t={reset}',
        "X-RateLimit-Limit": str(rule.burst),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(reset),
    }
    if not decision.allowed:
        # Retry-After is whole seconds (RFC 9110); round up so a client never comes back early.
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return headers
