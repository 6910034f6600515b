"""Twilio signature verification; every signature here is made by twilio's RequestValidator."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from gateway.auth import twilio_signature as ts
from tests.support.fuzz import FUZZ, bounded, odd_text
from tests.support.twilio import MultiDict

TOKEN = "12345678901234567890123456789012"
OLD_TOKEN = "abcdefabcdefabcdefabcdefabcdefab"
KEY = TOKEN.encode()
OLD_KEY = OLD_TOKEN.encode()

URL = "https://gw.example.com/twilio/voice"
VOICE: dict[str, list[str]] = {
    "AccountSid": ["AC00000000000000000000000000000001"],
    "CallSid": ["CA00000000000000000000000000000001"],
    "From": ["+15551230002"],
    "To": ["+15551230001"],
    "CallStatus": ["ringing"],
    "Direction": ["inbound"],
}


def twilio_sign(
    url: str,
    params: Mapping[str, Sequence[str]] | None,
    token: str = TOKEN,
    algorithm: str | None = None,
) -> str:
    multi = None if params is None else MultiDict(params)
    return RequestValidator(token).compute_signature(url, multi, algorithm)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(VOICE, id="voice-form"),
        pytest.param({}, id="empty"),
        pytest.param({"Digits": ["1"], "digits": ["2"]}, id="case-sensitive-names"),
        pytest.param({"Media": ["b", "a", "c"]}, id="repeated-name"),
        pytest.param({"Tag": ["x", "x", "y"]}, id="repeated-identical-values"),
        pytest.param({"Body": ["héllo wörld ☎ 你好 😀"]}, id="unicode-value"),
        pytest.param({"Bödy": ["ü"], "Body": [""]}, id="unicode-name-empty-value"),
        pytest.param({"A": [""], "B": ["", ""]}, id="empty-values"),
    ],
)
def test_form_signature_made_by_twilio_verifies(params: dict[str, list[str]]) -> None:
    """A form signature from twilio verifies, whatever the shape of the parameters."""
    signature = twilio_sign(URL, params)
    assert ts.verify_form(URL, params, signature, [KEY])


def test_plain_dict_values_are_single_values() -> None:
    """A {name: value} dict of strings is signed as twilio signs a plain dict."""
    params = {"From": "+15551230002", "Body": "hi"}
    signature = RequestValidator(TOKEN).compute_signature(URL, params)
    assert ts.verify_form(URL, params, signature, [KEY])


def test_repeated_identical_values_count_once() -> None:
    """twilio signs sorted(set(values)), so a doubled value signs as one."""
    signature = twilio_sign(URL, {"Tag": ["x"]})
    assert ts.verify_form(URL, {"Tag": ["x", "x"]}, signature, [KEY])


@pytest.mark.parametrize(
    ("signed_url", "received_url"),
    [
        pytest.param(URL + "?tenant=acme&x=1", URL + "?tenant=acme&x=1", id="query-string"),
        pytest.param("https://gw.example.com:443/v", "https://gw.example.com:443/v", id="443"),
        pytest.param("https://gw.example.com:443/v", "https://gw.example.com/v", id="443-removed"),
        pytest.param("https://gw.example.com/v", "https://gw.example.com:443/v", id="443-added"),
        pytest.param("http://gw.example.com/v", "http://gw.example.com:80/v", id="80-added"),
        pytest.param("http://gw.example.com:80/v", "http://gw.example.com/v", id="80-removed"),
        pytest.param("https://gw.example.com:8443/v", "https://gw.example.com:8443/v", id="8443"),
        pytest.param("https://gw.example.com/v", "https://gw.example.com:8443/v", id="any-port-removed"),
        pytest.param("wss://gw.example.com/t/a/stream", "wss://gw.example.com/t/a/stream", id="wss"),
        pytest.param("https://gw.example.com/v", "HTTPS://gw.example.com/v", id="scheme-case"),
        pytest.param("https://gw.example.com/v", "https://gw.example.com/v?", id="empty-query"),
    ],
)
def test_url_variants_twilio_accepts(signed_url: str, received_url: str) -> None:
    """The URL forms twilio's validator accepts for a signed URL are accepted here too."""
    signature = twilio_sign(signed_url, VOICE)
    assert RequestValidator(TOKEN).validate(received_url, MultiDict(VOICE), signature)
    assert ts.verify_form(received_url, VOICE, signature, [KEY])


@pytest.mark.parametrize(
    ("signed_url", "received_url"),
    [
        pytest.param("https://gw.example.com/v", "http://gw.example.com/v", id="https-to-http"),
        pytest.param("http://gw.example.com/v", "https://gw.example.com/v", id="http-to-https"),
        pytest.param("https://gw.example.com:443/v", "http://gw.example.com/v", id="443-to-http"),
        pytest.param("https://gw.example.com:8443/v", "https://gw.example.com/v", id="other-port-not-added"),
        pytest.param("https://gw.example.com:8443/v", "https://gw.example.com:9443/v", id="port"),
        pytest.param("https://gw.example.com/v", "https://gw.example.com/v/", id="trailing-slash"),
        pytest.param(URL + "?a=1", URL + "?a=2", id="query-value"),
        pytest.param("https://gw.example.com/v", "https://gw.example.com:99999/v", id="bad-port"),
    ],
)
def test_url_changes_twilio_rejects(signed_url: str, received_url: str) -> None:
    """A changed scheme, port, path or query fails, as in twilio; http and https never swap."""
    signature = twilio_sign(signed_url, VOICE)
    assert not ts.verify_form(received_url, VOICE, signature, [KEY])


@pytest.mark.parametrize(
    ("params", "signature_of"),
    [
        pytest.param({**VOICE, "To": ["+15559999999"]}, VOICE, id="value-changed"),
        pytest.param({**VOICE, "Extra": ["1"]}, VOICE, id="param-added"),
        pytest.param({k: v for k, v in VOICE.items() if k != "To"}, VOICE, id="param-removed"),
        pytest.param({"Media": ["a", "b"]}, {"Media": ["a"]}, id="value-added"),
        pytest.param({"To": [""]}, {}, id="empty-value-added"),
    ],
)
def test_tampered_params_rejected(params: dict[str, list[str]], signature_of: dict[str, list[str]]) -> None:
    """Parameters other than the signed ones fail verification."""
    assert not ts.verify_form(URL, params, twilio_sign(URL, signature_of), [KEY])


def test_wrong_token_rejected() -> None:
    """A signature made with another account's token fails."""
    signature = twilio_sign(URL, VOICE, token="someone-else-entirely-0000000000")
    assert not ts.verify_form(URL, VOICE, signature, [KEY])


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param([KEY, OLD_KEY], id="previous-second"),
        pytest.param([OLD_KEY, KEY], id="previous-first"),
    ],
)
def test_previous_token_accepted_during_rotation(keys: list[bytes]) -> None:
    """During a rotation a request signed with the previous token passes, as with the primary."""
    assert ts.verify_form(URL, VOICE, twilio_sign(URL, VOICE, token=OLD_TOKEN), keys)
    assert ts.verify_form(URL, VOICE, twilio_sign(URL, VOICE), keys)


def test_no_keys_rejects() -> None:
    """With no key to try, nothing verifies."""
    assert not ts.verify_form(URL, VOICE, twilio_sign(URL, VOICE), [])


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("not base64 at all", id="garbage"),
        pytest.param("é" * 28, id="non-ascii"),
    ],
)
def test_missing_or_malformed_signature_rejected(signature: str | None) -> None:
    """A missing, empty or malformed X-Twilio-Signature is simply invalid."""
    assert not ts.verify_form(URL, VOICE, signature, [KEY])
    assert not ts.verify_json(URL + "?bodySHA256=x", b"{}", signature, [KEY])


def test_signature_with_whitespace_rejected() -> None:
    """The header value is compared as is, like twilio: no stripping."""
    signature = twilio_sign(URL, VOICE)
    assert not ts.verify_form(URL, VOICE, signature + " ", [KEY])


def test_lone_surrogate_rejected_not_raised() -> None:
    """Text that cannot be UTF-8 encoded fails verification instead of raising."""
    signature = twilio_sign(URL, VOICE)
    assert not ts.verify_form(URL, {**VOICE, "Body": ["\ud800"]}, signature, [KEY])


BODY = b'{"event":"call.completed","sid":"CA1","note":"caf\xc3\xa9"}'
BODY_HASH = hashlib.sha256(BODY).hexdigest()
JSON_URL = f"https://gw.example.com/t/acme/events?bodySHA256={BODY_HASH}"


def test_json_body_with_hash_verifies() -> None:
    """A JSON webhook passes when bodySHA256 matches the body and the URL alone is signed."""
    signature = twilio_sign(JSON_URL, None)
    assert RequestValidator(TOKEN).validate(JSON_URL, BODY.decode(), signature)
    assert ts.verify_json(JSON_URL, BODY, signature, [KEY])


def test_json_body_with_port_variant_verifies() -> None:
    """The default-port variants apply to JSON webhooks too."""
    signed = JSON_URL.replace("gw.example.com", "gw.example.com:443")
    assert ts.verify_json(JSON_URL, BODY, twilio_sign(signed, None), [KEY])


def test_json_body_tampered_rejected() -> None:
    """A body that no longer matches bodySHA256 fails, though the URL signature is good."""
    signature = twilio_sign(JSON_URL, None)
    assert not ts.verify_json(JSON_URL, BODY + b" ", signature, [KEY])


def test_json_hash_in_url_tampered_rejected() -> None:
    """A bodySHA256 rewritten to fit a new body fails: the hash is inside the signed URL."""
    signature = twilio_sign(JSON_URL, None)
    forged_body = b'{"event":"forged"}'
    forged_url = JSON_URL.replace(BODY_HASH, hashlib.sha256(forged_body).hexdigest())
    assert not ts.verify_json(forged_url, forged_body, signature, [KEY])


def test_json_upper_case_hash_rejected() -> None:
    """The hash is compared as twilio compares it: lower-case hex, exactly."""
    url = JSON_URL.replace(BODY_HASH, BODY_HASH.upper())
    signature = twilio_sign(url, None)
    assert not RequestValidator(TOKEN).validate(url, BODY.decode(), signature)
    assert not ts.verify_json(url, BODY, signature, [KEY])


def test_json_first_hash_value_counts() -> None:
    """With bodySHA256 twice in the query, the first value is the one checked, as parse_qs gives."""
    url = f"{JSON_URL}&bodySHA256=0000"
    signature = twilio_sign(url, None)
    assert ts.verify_json(url, BODY, signature, [KEY])
    swapped = f"https://gw.example.com/t/acme/events?bodySHA256=0000&bodySHA256={BODY_HASH}"
    assert not ts.verify_json(swapped, BODY, twilio_sign(swapped, None), [KEY])


@pytest.mark.parametrize(
    ("url", "body", "expected"),
    [
        pytest.param("https://gw.example.com/e", b"{}", False, id="body-without-hash"),
        pytest.param("https://gw.example.com/e?bodySHA256=", b"{}", False, id="blank-hash"),
        pytest.param("https://gw.example.com/e", b"", True, id="empty-body-without-hash"),
    ],
)
def test_json_without_hash(url: str, body: bytes, expected: bool) -> None:
    """Without a bodySHA256 value only an empty body can pass (twilio raises on the others)."""
    assert ts.verify_json(url, body, twilio_sign(url, None), [KEY]) is expected


@pytest.mark.parametrize(
    ("header", "algorithm"),
    [
        pytest.param(None, "HMAC_SHA1", id="missing"),
        pytest.param("", "HMAC_SHA1", id="empty"),
        pytest.param("key=webhooks_sharedkey_1", "HMAC_SHA1", id="no-algorithm"),
        pytest.param("key=k1,algorithm=HMAC_SHA256", "HMAC_SHA256", id="sha256"),
        pytest.param(" algorithm = HMAC_SHA256 , key=k1", "HMAC_SHA256", id="spaces-order"),
        pytest.param("key=k1,algorithm=", "HMAC_SHA1", id="blank-algorithm"),
        pytest.param("key=k1,algorithm=HMAC_SHA512", "HMAC_SHA512", id="unknown-kept"),
    ],
)
def test_algorithm_from_settings_matches_twilio(header: str | None, algorithm: str) -> None:
    """The settings header is read exactly as twilio's get_signature_algorithm reads it."""
    from twilio.request_validator import get_signature_algorithm

    assert ts.algorithm_from_settings(header) == algorithm == get_signature_algorithm(header)


@pytest.mark.parametrize("algorithm", ["HMAC_SHA256", "hmac_sha256"])
def test_hmac_sha256_from_settings_header(algorithm: str) -> None:
    """A request signed with HMAC-SHA256 verifies under the algorithm its header names."""
    header = f"key=webhooks_sharedkey_1,algorithm={algorithm}"
    signature = twilio_sign(URL, VOICE, algorithm=algorithm)
    chosen = ts.algorithm_from_settings(header)
    assert ts.verify_form(URL, VOICE, signature, [KEY], chosen)
    assert not ts.verify_form(URL, VOICE, signature, [KEY])


def test_hmac_sha256_json_body() -> None:
    """A JSON webhook signed with HMAC-SHA256 verifies under HMAC_SHA256."""
    signature = twilio_sign(JSON_URL, None, algorithm="HMAC_SHA256")
    assert ts.verify_json(JSON_URL, BODY, signature, [KEY], "HMAC_SHA256")


def test_unknown_algorithm_rejected() -> None:
    """An algorithm twilio does not know fails verification, even for a good SHA-1 signature."""
    signature = twilio_sign(URL, VOICE)
    assert not ts.verify_form(URL, VOICE, signature, [KEY], "HMAC_SHA512")
    assert not ts.verify_json(URL, b"", twilio_sign(URL, None), [KEY], "HMAC_SHA512")


@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256"])
@pytest.mark.parametrize(
    "params",
    [
        pytest.param(None, id="none"),
        pytest.param({}, id="empty"),
        pytest.param(VOICE, id="voice"),
        pytest.param({"Media": ["b", "a", "b"], "Body": ["ü"]}, id="multi"),
    ],
)
def test_compute_equals_twilio(params: dict[str, list[str]] | None, algorithm: str) -> None:
    """compute() gives the same signature as twilio's compute_signature."""
    assert ts.compute(URL, params, KEY, algorithm) == twilio_sign(URL, params, algorithm=algorithm)


def test_compute_unknown_algorithm_raises() -> None:
    """compute() refuses an algorithm it cannot compute, naming it."""
    with pytest.raises(ValueError, match="HMAC_MD5"):
        ts.compute(URL, None, KEY, "HMAC_MD5")


# URLs as a request can make them (the Host header and the raw path are the sender's): a scheme,
# then a host and port and a path where anything goes, bad ports and IPv6 brackets included.
_url_part = st.one_of(
    odd_text, st.sampled_from(["", ":", ":99999", ":-1", ":0", "[::1", "[::1]:80", "@", "?", "#", ";"])
)
urls = st.one_of(
    odd_text,
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["https", "http", "wss", "HTTPS", ""]),
        _url_part,
        _url_part,
        _url_part,
    ),
)
_params = st.dictionaries(odd_text, st.lists(odd_text, max_size=3), max_size=4)
_signatures = st.one_of(st.none(), odd_text, st.just(twilio_sign(URL, VOICE)))
_algorithms = st.one_of(odd_text, st.sampled_from([ts.HMAC_SHA1, ts.HMAC_SHA256, "hmac_sha256", ""]))


@FUZZ
@given(urls, _params, _signatures, _algorithms, st.binary(max_size=64))
@example("https://gw.example.com:99999/x", {}, "x", ts.HMAC_SHA1, b"")  # urllib's port raises ValueError
@example("https://[::1/x", {}, "x", ts.HMAC_SHA1, b"")  # and so does a bad IPv6 literal
@example("https://gw.example.com/\udcff", {"B\udcff": ["\ud800"]}, "x", ts.HMAC_SHA1, b"")
def test_verifying_anything_is_a_verdict_never_an_error(
    url: str, params: dict[str, list[str]], signature: str | None, algorithm: str, body: bytes
) -> None:
    """verify_form and verify_json on any URL, parameters, signature and algorithm say True or False, never raise."""
    with bounded():
        assert ts.verify_form(url, params, signature, [KEY, OLD_KEY], algorithm) in (True, False)
        assert ts.verify_json(url, body, signature, [KEY], algorithm) in (True, False)


@FUZZ
@given(urls, _params, _algorithms)
def test_compute_signs_or_raises_value_error(url: str, params: dict[str, list[str]], algorithm: str) -> None:
    """compute() gives a base64 signature, or ValueError (an unknown algorithm, text that cannot be UTF-8)."""
    try:
        with bounded():
            signature = ts.compute(url, params, KEY, algorithm)
    except ValueError:
        return
    assert signature.isascii() and len(signature) in (28, 44)


@FUZZ
@given(st.one_of(st.none(), odd_text, odd_text.map(lambda value: "key=x,algorithm=" + value)))
def test_any_settings_header_names_an_algorithm(header: str | None) -> None:
    """algorithm_from_settings() on any X-Twilio-Webhooks-Signature-Settings value gives a name, never raises."""
    with bounded():
        assert isinstance(ts.algorithm_from_settings(header), str)
