"""Rate-limit headers follow the IETF draft's structured fields and the legacy triple."""

from __future__ import annotations

from gateway.limits.base import Decision, Rule
from gateway.limits.headers import rate_limit_headers

RULE = Rule("api", rate=10, per=60.0, burst=5)


def test_allowed_headers_describe_quota_and_window() -> None:
    """q is the burst, w the seconds to refill it, r and t the remaining tokens and time to full."""
    headers = rate_limit_headers(Decision(True, 3, 0.0, 11.2, RULE))
    assert headers["RateLimit-Policy"] == '"api";q=5;w=30'
    assert headers["RateLimit"] == '"api";r=3;t=12'
    assert headers["X-RateLimit-Remaining"] == "3"
    assert "Retry-After" not in headers


def test_refused_headers_carry_retry_after_rounded_up() -> None:
    """Retry-After is whole seconds, rounded up so a client never returns too early."""
    headers = rate_limit_headers(Decision(False, 0, 5.01, 30.0, RULE))
    assert headers["Retry-After"] == "6"
    assert headers["RateLimit"] == '"api";r=0;t=30'


def test_sub_second_retry_is_at_least_one() -> None:
    """A refusal that clears in milliseconds still says Retry-After: 1, never 0."""
    assert rate_limit_headers(Decision(False, 0, 0.02, 0.5, RULE))["Retry-After"] == "1"


def test_a_float_hair_over_a_whole_second_is_not_a_second_more() -> None:
    """10 tokens at 5 a second: an empty bucket's reset says 2 s when the store's float
    arithmetic (a GCRA's theoretical arrival time less now) says 2.0000000000000004, so `t`
    never exceeds `w`."""
    rule = Rule("api", 5.0, 1.0, 10)
    reset = 2.0000000000000004
    headers = rate_limit_headers(Decision(False, 0, 1 * rule.interval, reset, rule))
    assert headers["RateLimit-Policy"] == '"api";q=10;w=2'
    assert headers["RateLimit"] == '"api";r=0;t=2'
    assert headers["Retry-After"] == "1"
