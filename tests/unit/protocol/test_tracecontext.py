"""W3C trace context: traceparent and tracestate parsed and written, and new ids."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.protocol import tracecontext
from gateway.protocol.tracecontext import Parent, parse_traceparent, traceparent
from tests.support.fuzz import FUZZ, bounded, odd_text

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_HEX = "00f067aa0ba902b7"
TRACE_ID = bytes.fromhex(TRACE_HEX)
SPAN_ID = bytes.fromhex(SPAN_HEX)

# --- traceparent -------------------------------------------------------------------------------

VALID = f"00-{TRACE_HEX}-{SPAN_HEX}-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, Parent(TRACE_ID, SPAN_ID, True)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-00", Parent(TRACE_ID, SPAN_ID, False)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-03", Parent(TRACE_ID, SPAN_ID, True)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-02", Parent(TRACE_ID, SPAN_ID, False)),
        (f"01-{TRACE_HEX}-{SPAN_HEX}-01", Parent(TRACE_ID, SPAN_ID, True)),
        (f"cc-{TRACE_HEX}-{SPAN_HEX}-01-what-the-future-holds", Parent(TRACE_ID, SPAN_ID, True)),
        (None, None),
        ("", None),
        ("garbage", None),
        (VALID.upper(), None),
        (f"00-{TRACE_HEX.upper()}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX.upper()}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-0A", None),
        (f"0A-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (f"00-{'0' * 32}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{'0' * 16}-01", None),
        (f"ff-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX[:-1]}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}0-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX[:-1]}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-1", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-011", None),
        (f"0-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (VALID + "-", None),
        (VALID + "-extra", None),
        (VALID + "\n", None),
        (" " + VALID, None),
        (f"cc-{TRACE_HEX}-{SPAN_HEX}-01x", None),
        (f"00_{TRACE_HEX}_{SPAN_HEX}_01", None),
        (f"00-{TRACE_HEX[:-1]}g-{SPAN_HEX}-01", None),
    ],
    ids=[
        "valid-sampled",
        "valid-not-sampled",
        "other-flags-sampled",
        "other-flags-not-sampled",
        "future-version",
        "future-version-more-fields",
        "absent",
        "empty",
        "garbage",
        "all-uppercase",
        "uppercase-trace-id",
        "uppercase-span-id",
        "uppercase-flags",
        "uppercase-version",
        "zero-trace-id",
        "zero-span-id",
        "version-ff",
        "short-trace-id",
        "long-trace-id",
        "short-span-id",
        "short-flags",
        "long-flags",
        "short-version",
        "v00-trailing-dash",
        "v00-more-fields",
        "trailing-newline",
        "leading-space",
        "future-version-no-dash",
        "wrong-separators",
        "not-hex",
    ],
)
def test_parse_traceparent(value: str | None, expected: Parent | None) -> None:
    """W3C traceparent rules: lowercase hex, fixed lengths, no zero ids, no version ff."""
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("state", "kept"),
    [
        ("vendor=abc,other=1", "vendor=abc,other=1"),
        (None, ""),
        ("k=" + "v" * 510, "k=" + "v" * 510),
        ("k=" + "v" * 511, ""),
    ],
    ids=["kept", "absent", "512-chars", "513-chars-dropped"],
)
def test_tracestate(state: str | None, kept: str) -> None:
    """tracestate rides along with a valid traceparent when at most 512 characters."""
    parent = parse_traceparent(VALID, state)
    assert parent is not None and parent.trace_state == kept


def test_tracestate_without_valid_traceparent_is_dropped() -> None:
    """No parent, no tracestate."""
    assert parse_traceparent("garbage", "vendor=abc") is None


# Nearly valid headers (the right shape with odd text around or inside it) as well as any text.
def _hex(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdefF", min_size=n, max_size=n)


_near = st.builds(
    lambda version, trace, span, flags, rest: f"{version}-{trace}-{span}-{flags}{rest}",
    _hex(2) | odd_text,
    _hex(32),
    _hex(16),
    _hex(2) | odd_text,
    st.just("") | odd_text,
)


@FUZZ
@given(st.one_of(st.none(), odd_text, _near), st.one_of(st.none(), odd_text))
@example(VALID + "\n", None)
@example(f"01-{TRACE_HEX}-{SPAN_HEX}-01-\udcff", "k=\udcff")
def test_any_header_is_a_parent_or_none(value: str | None, state: str | None) -> None:
    """parse_traceparent() on any traceparent and tracestate gives None or a well-formed Parent, never raises."""
    with bounded():
        parent = parse_traceparent(value, state)
    if parent is not None:
        assert len(parent.trace_id) == 16 and len(parent.span_id) == 8 and len(parent.trace_state) <= 512


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "not-sampled"])
def test_traceparent_round_trips(sampled: bool) -> None:
    """traceparent() writes what parse_traceparent() reads back."""
    value = traceparent(TRACE_ID, SPAN_ID, sampled)
    assert value == f"00-{TRACE_HEX}-{SPAN_HEX}-{'01' if sampled else '00'}"
    assert parse_traceparent(value) == Parent(TRACE_ID, SPAN_ID, sampled)


def test_new_ids_have_their_sizes() -> None:
    """Trace ids are 16 bytes and span ids 8, never all zero."""
    trace_ids = {tracecontext.new_trace_id() for _ in range(100)}
    span_ids = {tracecontext.new_span_id() for _ in range(100)}
    assert {len(t) for t in trace_ids} == {16} and {len(s) for s in span_ids} == {8}
    assert len(trace_ids) == len(span_ids) == 100
    assert bytes(16) not in trace_ids and bytes(8) not in span_ids


def test_new_ids_draw_again_on_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """An all-zero draw (invalid in W3C and OTLP) is drawn again."""
    draws = iter([0, 7, 0, 9])
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(draws))
    assert tracecontext.new_trace_id() == (7).to_bytes(16, "big")
    assert tracecontext.new_span_id() == (9).to_bytes(8, "big")
