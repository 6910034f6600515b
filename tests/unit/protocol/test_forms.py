"""The hand-written form parser agrees with the standard library."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.forms import parse_form
from tests.support.fuzz import FUZZ, bounded

names = st.text(min_size=1, max_size=12)
values = st.text(max_size=20)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=12))
def test_matches_parse_qs_on_encoded_forms(pairs: list[tuple[str, str]]) -> None:
    """Any urlencoded form parses to the same name → [values] as parse_qs(keep_blank_values)."""
    body = urlencode(pairs).encode()
    assert parse_form(body) == parse_qs(body.decode(), keep_blank_values=True)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_matches_parse_qs_on_arbitrary_bytes(body: bytes) -> None:
    """Even malformed bodies (no '=', stray '%', bad UTF-8) parse as parse_qs would."""
    text = body.decode("utf-8", "replace")
    assert parse_form(body) == parse_qs(text, keep_blank_values=True)


# The pieces a hostile body is made of: separators, escapes cut short, escapes of bytes that are
# not UTF-8 (a lone surrogate's encoding among them), and stray bytes.
_pieces = st.sampled_from(
    [b"&", b"=", b"+", b"%", b"%2", b"%26", b"%3D", b"%3d", b"%ff", b"%ed%a0%80", b"%C3", b"\xff"]
)
hostile_bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_pieces, st.binary(max_size=4)), max_size=40).map(b"".join),
)


@FUZZ
@given(hostile_bodies)
def test_any_body_parses_to_text_that_encodes(body: bytes) -> None:
    """No body makes parse_form raise, and every name and value it gives encodes as UTF-8 (signatures do)."""
    with bounded():
        form = parse_form(body)
    for name, values in form.items():
        name.encode()
        assert values and all(isinstance(value, str) and value.encode() is not None for value in values)


def test_keeps_repeated_names_in_order() -> None:
    """Repeated names keep every value in arrival order, which signatures depend on."""
    assert parse_form(b"a=2&b=x&a=1&a=2") == {"a": ["2", "1", "2"], "b": ["x"]}


def test_escaped_separators_stay_inside_their_value() -> None:
    """An SMS body with '&' and '=' keeps them in the value, not as new fields."""
    body = urlencode({"Body": "a=1&b=2 50%+", "From": "+15557654321"}).encode()
    assert parse_form(body) == {"Body": ["a=1&b=2 50%+"], "From": ["+15557654321"]}
