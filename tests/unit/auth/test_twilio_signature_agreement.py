"""Property: our verifier gives twilio's RequestValidator.validate verdict on generated requests."""

from __future__ import annotations

import hashlib
from urllib.parse import urlparse

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator, add_port, remove_port

from gateway.auth import twilio_signature as ts
from tests.support.twilio import MultiDict

TOKEN = "12345678901234567890123456789012"
OTHER_TOKEN = "abcdefabcdefabcdefabcdefabcdefab"
NEVER_TOKEN = "never-signs-anything-000000000000"

AGREEMENT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Mostly the URLs a gateway sees, with some that only urllib's round trip can judge
# (upper-case scheme, empty "?", a ";" path parameter, a fragment, port 0, userinfo,
# an IPv6 literal, a bad port), where twilio's own port handling is at its oddest.
schemes = st.sampled_from(["https", "http", "https", "http", "wss", "HTTPS", "Http"])
hosts = st.one_of(
    st.sampled_from(["gw.example.com", "localhost", "10.0.0.5", "GW.Example.COM", "a-b.io"]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.sampled_from(["[::1]", "[2001:db8::5]", "user@gw.example.com", "u:pw@Gw.example.com"]),
)
ports = st.one_of(
    st.sampled_from([None, None, None, "80", "443", "0", "080", "8080", "", "99999", "x"]),
    st.integers(1, 65535).map(str),
)
segment = st.text(alphabet=st.sampled_from("abcXYZ019-._~%20é;:@!$&'()*+,="), min_size=0, max_size=8)
paths = st.lists(segment, max_size=4).map(lambda parts: "".join("/" + p for p in parts))
query_text = st.text(alphabet=st.sampled_from("abcXYZ019-._~%=&+é/?;"), max_size=20)
queries = st.one_of(st.just(""), st.just("?"), query_text.map(lambda q: "?" + q))
fragments = st.sampled_from(["", "", "", "", "#", "#ct=3000"])
values = st.text(max_size=12)  # unicode, empty strings; no lone surrogates
params_strategy = st.dictionaries(
    st.text(min_size=1, max_size=8), st.lists(values, min_size=1, max_size=4), max_size=16
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    port = draw(ports)
    netloc = draw(hosts) + ("" if port is None else ":" + port)
    return f"{draw(schemes)}://{netloc}{draw(paths)}{draw(queries)}{draw(fragments)}"


def twilio_variant(url: str, variant: str) -> str:
    """The URL Twilio is imagined to have signed, derived from the received one."""
    if variant == "given":
        return url
    parsed = urlparse(url)
    if variant == "removed":
        return remove_port(parsed)  # type: ignore[no-any-return]
    if variant == "added":
        return add_port(parsed)  # type: ignore[no-any-return]
    if variant == "other-port":
        bare = urlparse(str(remove_port(parsed)))
        return bare._replace(netloc=bare.netloc + ":8081").geturl()
    # The other scheme, which must never be accepted.
    scheme, rest = url.split("://", 1)
    return ("http" if scheme.lower() == "https" else "https") + "://" + rest


variants = st.sampled_from(["given", "removed", "added", "other-port", "swapped-scheme"])


def twilio_verdict(url: str, params: object, signature: str) -> bool | None:
    """twilio's verdict, or None where it raises (a port or IPv6 literal urllib rejects)."""
    try:
        return bool(RequestValidator(TOKEN).validate(url, params, signature))
    except ValueError:
        return None


@AGREEMENT
@example(url="wss://gw.example.com/t/a/stream", params={}, variant="added", wrong="no", rotation=False)
@example(url="https://gw.example.com:0/v", params={}, variant="added", wrong="no", rotation=False)
@example(url="HTTPS://gw.example.com/v?", params={}, variant="given", wrong="no", rotation=False)
@example(url="http://u:pw@[::1]:8080/v;", params={}, variant="removed", wrong="no", rotation=True)
@given(
    url=urls(),
    params=params_strategy,
    variant=variants,
    wrong=st.sampled_from(["no", "no", "token", "param"]),
    rotation=st.booleans(),
)
def test_form_verdict_agrees_with_twilio(
    url: str, params: dict[str, list[str]], variant: str, wrong: str, rotation: bool
) -> None:
    """verify_form accepts exactly when twilio's validate accepts, for right and wrong signatures."""
    try:
        signed_url = twilio_variant(url, variant)
    except ValueError:
        variant, signed_url = "unparsable", url  # twilio's validate will raise too
    signer = OTHER_TOKEN if wrong == "token" else TOKEN
    signature = RequestValidator(signer).compute_signature(signed_url, MultiDict(params))
    received = {**params, "Tampered": ["1"]} if wrong == "param" else params
    # During a rotation the other key tried is one that never signs anything here.
    keys = [NEVER_TOKEN.encode(), TOKEN.encode()] if rotation else [TOKEN.encode()]

    theirs = twilio_verdict(url, MultiDict(received), signature)
    assert ts.verify_form(url, received, signature, keys) == bool(theirs)
    if wrong == "no" and variant in ("removed", "added"):
        # Not vacuous: twilio accepts its own port variants of any URL it can parse.
        assert theirs is True


@AGREEMENT
@given(
    url=urls(),
    body=st.text(max_size=40).map(lambda t: '{"v":' + repr(t) + "}"),
    variant=variants,
    hash_of=st.sampled_from(["body", "body", "other", "upper", "none", "body-first", "body-second"]),
    algorithm=st.sampled_from(["HMAC_SHA1", "HMAC_SHA256", "HMAC_SHA512"]),
)
def test_json_verdict_agrees_with_twilio(url: str, body: str, variant: str, hash_of: str, algorithm: str) -> None:
    """verify_json accepts exactly when twilio's validate accepts the body as a string."""
    digest = hashlib.sha256(body.encode()).hexdigest()
    claimed = {
        "body": digest,
        "other": hashlib.sha256(b"{}").hexdigest(),
        "upper": digest.upper(),
        "none": "",
        "body-first": f"{digest}&bodySHA256={'0' * 64}",
        "body-second": f"{'0' * 64}&bodySHA256={digest}",
    }[hash_of]
    if claimed:
        head, sep, fragment = url.partition("#")
        joiner = "&" if "?" in head and not head.endswith("?") else ("" if "?" in head else "?")
        url = f"{head}{joiner}bodySHA256={claimed}{sep}{fragment}"
    try:
        signed_url = twilio_variant(url, variant)
    except ValueError:
        signed_url = url
    signing = "HMAC_SHA1" if algorithm == "HMAC_SHA512" else algorithm
    signature = RequestValidator(TOKEN).compute_signature(signed_url, None, signing)

    try:
        theirs = bool(RequestValidator(TOKEN).validate(url, body, signature, algorithm))
    except (ValueError, TypeError):
        # A bad port; or no bodySHA256 and a body, which twilio iterates as parameters.
        theirs = False
    ours = ts.verify_json(url, body.encode(), signature, [TOKEN.encode()], algorithm)
    assert ours == theirs
