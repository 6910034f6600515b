"""Masks phone numbers before they reach a log line or a span."""

from __future__ import annotations

KEEP_TAIL = 4


def mask_number(value: str) -> str:
    """`+15557654321` → `+1******4321`: enough to tell callers apart, not to dial them."""
    if not value:
        return value
    if value.startswith("+") and len(value) > KEEP_TAIL + 2:
        return value[:2] + "*" * (len(value) - 2 - KEEP_TAIL) + value[-KEEP_TAIL:]
    if value.startswith(("client:", "sip:")) or len(value) <= KEEP_TAIL:
        # Client identities and SIP URIs carry user names; short codes are not personal.
        return value.split(":", 1)[0] + ":***" if ":" in value else value
    return "*" * (len(value) - KEEP_TAIL) + value[-KEEP_TAIL:]
