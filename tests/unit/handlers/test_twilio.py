"""The Twilio webhook handler's pure parts: the parameters of a JSON webhook, read before its
signature is checked."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.handlers.twilio import _json_params
from tests.support.fuzz import FUZZ, bounded

# Any JSON document (integers past 64 bits and non-finite numbers included: json writes both),
# or bytes that are only nearly one.
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
documents = st.one_of(
    _json.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.text(max_size=8), _scalars, max_size=6).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
)


@FUZZ
@given(documents)
@example(b'{"To": "\\ud800"}')  # an escaped lone surrogate: no str could carry it on
@example(b'{"To": "\xff"}')  # a string that is not UTF-8
@example(b'{"CallDuration": 1e400, "NumSegments": 18446744073709551616}')
@example(b"\xef\xbb\xbf{}")  # a byte order mark
def test_any_body_gives_text_parameters_or_none(body: bytes) -> None:
    """A JSON webhook's body, whatever it holds, gives name → [text] (text that encodes) and never raises."""
    with bounded():
        params = _json_params(body)
    for name, values in params.items():
        assert isinstance(name, str) and len(values) == 1 and isinstance(values[0], str)
        (name + values[0]).encode()


def test_top_level_scalars_are_the_parameters() -> None:
    """Strings stay, numbers become their text, objects, lists and nulls are left out."""
    body = b'{"To": "+15550001", "NumSegments": 2, "Price": 0.5, "Media": [], "Extra": {}, "Gone": null}'
    assert _json_params(body) == {"To": ["+15550001"], "NumSegments": ["2"], "Price": ["0.5"]}
