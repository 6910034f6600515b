"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` and `tracestate`
headers read and written, and new trace and span ids. Pure: no I/O, nothing of OpenTelemetry."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Parent:
    """The caller's span, from a valid `traceparent` (and its `tracestate`)."""

    trace_id: bytes
    span_id: bytes
    sampled: bool
    trace_state: str = ""


# W3C Trace Context §3.2: lowercase hex only; a future version may append "-..." fields after the
# first four, which a parser of version 00 must ignore (and version 00 itself has none).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII)
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
# W3C Trace Context §3.3.1.5: a vendor must propagate at least 512 characters of tracestate; longer
# ones may be dropped whole, which keeps a hostile header from riding along on every span.
MAX_TRACESTATE = 512


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Parent | None:
    """The parent a `traceparent` header names, or None when it is absent or invalid (start a new trace)."""
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    state = tracestate if tracestate is not None and len(tracestate) <= MAX_TRACESTATE else ""
    return Parent(bytes.fromhex(trace_id), bytes.fromhex(span_id), bool(int(flags, 16) & 1), state)


def traceparent(trace_id: bytes, span_id: bytes, sampled: bool) -> str:
    """A version-00 `traceparent` header value."""
    return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"


# Trace ids are identifiers, not secrets: the SDK draws them from `random` too, which is much cheaper
# per request than `secrets`. All-zero ids are invalid in W3C and OTLP, hence the loops.
def new_trace_id() -> bytes:
    """16 random bytes, never all zero."""
    while not (n := random.getrandbits(128)):
        pass
    return n.to_bytes(16, "big")


def new_span_id() -> bytes:
    """8 random bytes, never all zero."""
    while not (n := random.getrandbits(64)):
        pass
    return n.to_bytes(8, "big")
