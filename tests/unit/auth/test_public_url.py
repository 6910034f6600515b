"""Rebuilding the URL Twilio signed from the configured public URLs, or a trusted proxy's headers; else none."""

from __future__ import annotations

import pytest

from gateway.auth.public_url import PublicUrl, parse_proxies

PROXIES = parse_proxies(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])
BEHIND_PROXY = PublicUrl(trusted_proxies=PROXIES)
ONE = PublicUrl(("https://gw.example.com",))
SEVERAL = PublicUrl(("https://gw.example.com", "https://Voice.Example.org/edge", "http://10.0.0.5:8080"))
SEVERAL_BEHIND_PROXY = PublicUrl(SEVERAL.bases, PROXIES)


def rebuild(
    public: PublicUrl,
    *,
    peer: str | None = "10.1.2.3",
    proto: str | None = "https",
    host: str | None = "gw.example.com",
    path_qs: str = "/twilio/voice?x=1",
    websocket: bool = False,
    request_host: str = "10.0.0.5:8080",
) -> str | None:
    return public.rebuild(
        scheme="http",
        host=request_host,
        path_qs=path_qs,
        peer=peer,
        forwarded_proto=proto,
        forwarded_host=host,
        websocket=websocket,
    )


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        pytest.param("https://gw.example.com", "https://gw.example.com/twilio/voice?x=1", id="origin"),
        pytest.param("https://gw.example.com/", "https://gw.example.com/twilio/voice?x=1", id="slash"),
        pytest.param("https://x.com/gw", "https://x.com/gw/twilio/voice?x=1", id="path-prefix"),
        pytest.param("https://x.com:8443", "https://x.com:8443/twilio/voice?x=1", id="port"),
        pytest.param("HTTPS://X.com", "https://X.com/twilio/voice?x=1", id="scheme-lowered"),
    ],
)
def test_base_url_wins(base: str, expected: str) -> None:
    """A configured base replaces scheme and host, even when a trusted proxy forwards others."""
    public = PublicUrl((base,), trusted_proxies=PROXIES)
    assert rebuild(public, proto="http", host="evil.example") == expected


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param("10.1.2.3", id="ipv4-network"),
        pytest.param("192.0.2.7", id="ipv4-single-address"),
        pytest.param("fd12:3456::1", id="ipv6"),
        pytest.param("::ffff:10.9.9.9", id="ipv4-mapped-ipv6"),
    ],
)
def test_forwarded_headers_honoured_from_trusted_peer(peer: str) -> None:
    """X-Forwarded-Proto and X-Forwarded-Host rebuild the URL when the peer is a trusted proxy."""
    assert rebuild(BEHIND_PROXY, peer=peer) == "https://gw.example.com/twilio/voice?x=1"


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param("203.0.113.9", id="ipv4-outside"),
        pytest.param("192.0.2.8", id="next-to-single-address"),
        pytest.param("2001:db8::1", id="ipv6-outside"),
        pytest.param("::ffff:203.0.113.9", id="ipv4-mapped-outside"),
        pytest.param(None, id="no-peer"),
        pytest.param("", id="empty-peer"),
        pytest.param("not-an-ip", id="unix-socket-or-garbage"),
    ],
)
def test_no_url_for_untrusted_peer_without_base(peer: str | None) -> None:
    """Without a base, a peer outside the trusted networks gets no URL at all: neither its
    forwarded headers nor its Host header can be believed."""
    assert rebuild(BEHIND_PROXY, peer=peer) is None
    assert rebuild(BEHIND_PROXY, peer=peer, proto=None, host=None) is None


def test_no_base_and_no_proxies_trusts_nothing() -> None:
    """With neither bases nor proxies configured, no request's URL can be rebuilt."""
    assert rebuild(PublicUrl(), peer="10.1.2.3") is None
    assert rebuild(PublicUrl(), peer="127.0.0.1", proto=None, host=None) is None


def test_trusted_proxy_without_forwarded_headers_uses_its_host() -> None:
    """A trusted proxy that sets no X-Forwarded-* is taken at its word: its scheme and Host."""
    assert rebuild(BEHIND_PROXY, proto=None, host=None, request_host="gw.example.com") == (
        "http://gw.example.com/twilio/voice?x=1"
    )


@pytest.mark.parametrize(
    ("public", "peer", "expected"),
    [
        pytest.param(ONE, "203.0.113.9", "https://gw.example.com", id="one-base"),
        pytest.param(ONE, "10.1.2.3", "https://gw.example.com", id="one-base-peer-in-proxy-range"),
        pytest.param(SEVERAL, "203.0.113.9", "https://gw.example.com", id="several-bases"),
        pytest.param(SEVERAL_BEHIND_PROXY, "203.0.113.9", "https://gw.example.com", id="several-bases-untrusted-peer"),
        pytest.param(PublicUrl(), "203.0.113.9", None, id="no-base"),
        pytest.param(BEHIND_PROXY, "203.0.113.9", None, id="no-base-untrusted-peer"),
        pytest.param(BEHIND_PROXY, "::ffff:203.0.113.9", None, id="no-base-ipv4-mapped-untrusted-peer"),
    ],
)
def test_evil_host_header_never_picks_the_url(public: PublicUrl, peer: str, expected: str | None) -> None:
    """`Host: evil.example` (and forwarded headers) from an untrusted peer never put evil.example in
    the URL: it is a configured base (so a signature made for evil.example fails) or none at all."""
    for proto, host in (("http", "evil.example"), (None, None)):
        url = rebuild(public, peer=peer, request_host="evil.example", proto=proto, host=host)
        assert url == (None if expected is None else expected + "/twilio/voice?x=1")


@pytest.mark.parametrize(
    ("request_host", "expected"),
    [
        pytest.param("gw.example.com", "https://gw.example.com", id="first"),
        pytest.param("voice.example.org", "https://Voice.Example.org/edge", id="second-with-prefix"),
        pytest.param("VOICE.example.ORG", "https://Voice.Example.org/edge", id="case-insensitive"),
        pytest.param("voice.example.org:443", "https://Voice.Example.org/edge", id="default-port-written"),
        pytest.param("voice.example.org:8443", "https://gw.example.com", id="other-port-no-match"),
        pytest.param("10.0.0.5:8080", "http://10.0.0.5:8080", id="address-and-port"),
        pytest.param("10.0.0.5", "https://gw.example.com", id="port-missing-no-match"),
        pytest.param("", "https://gw.example.com", id="empty"),
    ],
)
def test_host_header_chooses_among_several_bases(request_host: str, expected: str) -> None:
    """With several bases the Host header picks the one whose host[:port] it names, else the first."""
    assert rebuild(SEVERAL, peer="203.0.113.9", request_host=request_host) == expected + "/twilio/voice?x=1"


@pytest.mark.parametrize(
    ("peer", "forwarded_host", "expected"),
    [
        pytest.param("10.1.2.3", "voice.example.org", "https://Voice.Example.org/edge", id="trusted-forwarded"),
        pytest.param("::ffff:10.1.2.3", "voice.example.org", "https://Voice.Example.org/edge", id="ipv4-mapped"),
        pytest.param("10.1.2.3", "voice.example.org, gw.example.com", "https://Voice.Example.org/edge", id="list"),
        pytest.param("10.1.2.3", "evil.example", "https://gw.example.com", id="trusted-but-unknown-host"),
        pytest.param("10.1.2.3", None, "https://gw.example.com", id="trusted-no-header-uses-host"),
        pytest.param("203.0.113.9", "voice.example.org", "https://gw.example.com", id="untrusted-ignored"),
    ],
)
def test_trusted_proxy_forwarded_host_chooses_among_bases(peer: str, forwarded_host: str | None, expected: str) -> None:
    """Behind a trusted proxy, X-Forwarded-Host (not the proxy's Host) chooses the base; scheme stays the base's."""
    url = rebuild(SEVERAL_BEHIND_PROXY, peer=peer, proto="http", host=forwarded_host, request_host="gw.example.com")
    assert url == expected + "/twilio/voice?x=1"


def test_fixed_and_first() -> None:
    """`fixed` is the base only when exactly one is configured; `first` is the first of any."""
    assert (ONE.fixed, ONE.first) == ("https://gw.example.com", "https://gw.example.com")
    assert (SEVERAL.fixed, SEVERAL.first) == (None, "https://gw.example.com")
    assert (PublicUrl().fixed, PublicUrl().first) == (None, None)
    assert PublicUrl(("https://gw.example.com/", "https://gw.example.com")).fixed == "https://gw.example.com"


def test_bases_sharing_a_host_are_refused() -> None:
    """Two different bases the Host header could not tell apart are refused, naming both."""
    with pytest.raises(ValueError, match="same host") as info:
        PublicUrl(("https://gw.example.com/a", "https://GW.example.com:443/b"))
    assert "'https://gw.example.com/a'" in str(info.value) and "'https://GW.example.com:443/b'" in str(info.value)


def test_a_bare_string_is_refused() -> None:
    """A string is not taken for a sequence of one-character URLs."""
    with pytest.raises(TypeError, match="tuple of URLs"):
        PublicUrl("https://gw.example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("proto", "host", "expected"),
    [
        pytest.param("https, http", "gw.example.com, proxy.internal", "https://gw.example.com", id="lists"),
        pytest.param(" HTTPS ", " gw.example.com:8443 ", "https://gw.example.com:8443", id="spaces-case"),
        pytest.param(None, "gw.example.com", "http://gw.example.com", id="host-only"),
        pytest.param("https", None, "https://10.0.0.5:8080", id="proto-only"),
        pytest.param("", "", "http://10.0.0.5:8080", id="empty"),
        pytest.param(",https", "gw.example.com", "http://gw.example.com", id="empty-first"),
    ],
)
def test_forwarded_first_value_taken(proto: str | None, host: str | None, expected: str) -> None:
    """Of a comma-separated list the first value counts; a missing one falls back to the request."""
    assert rebuild(BEHIND_PROXY, proto=proto, host=host, path_qs="/v") == expected + "/v"


@pytest.mark.parametrize(
    ("public", "request_host", "expected"),
    [
        pytest.param(ONE, "gw.example.com", "wss://gw.example.com/s", id="base"),
        pytest.param(SEVERAL, "voice.example.org", "wss://Voice.Example.org/edge/s", id="chosen-base"),
        pytest.param(SEVERAL, "10.0.0.5:8080", "ws://10.0.0.5:8080/s", id="chosen-http-base"),
        pytest.param(BEHIND_PROXY, "10.0.0.5:8080", "wss://gw.example.com/s", id="forwarded"),
    ],
)
def test_websocket_scheme(public: PublicUrl, request_host: str, expected: str) -> None:
    """A WebSocket upgrade is signed over ws:// or wss://, so the scheme is mapped."""
    assert rebuild(public, path_qs="/s", websocket=True, request_host=request_host) == expected


def test_raw_path_kept_verbatim() -> None:
    """The path and query are used as received, percent-escapes and all."""
    path_qs = "/t/acme%20co/voice?a=%2F&b=+"
    assert rebuild(ONE, path_qs=path_qs) == "https://gw.example.com" + path_qs


@pytest.mark.parametrize(
    "base",
    [
        pytest.param("gw.example.com", id="no-scheme"),
        pytest.param("ftp://gw.example.com", id="ftp"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://gw.example.com/?a=1", id="query"),
        pytest.param("https://gw.example.com/#f", id="fragment"),
        pytest.param("https://gw.example.com/a b", id="space"),
        pytest.param("https://[::1/", id="bad-ipv6"),
        pytest.param("https://gw.example.com:http", id="bad-port"),
        pytest.param("https://user:pw@gw.example.com", id="credentials"),
    ],
)
def test_bad_base_rejected(base: str) -> None:
    """A base that is not an absolute http(s) URL without query or fragment is refused by value."""
    with pytest.raises(ValueError, match="public base URL") as info:
        PublicUrl(("https://ok.example.com", base))
    assert repr(base) in str(info.value)


@pytest.mark.parametrize(
    "cidr",
    [
        pytest.param("10.0.0.0/33", id="prefix-too-long"),
        pytest.param("10.0.0.1/8", id="host-bits-set"),
        pytest.param("proxy.internal", id="hostname"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_cidr_rejected(cidr: str) -> None:
    """A trusted proxy that is not an IP network is refused, naming the value."""
    with pytest.raises(ValueError, match="trusted proxy") as info:
        parse_proxies(["10.0.0.0/8", cidr])
    assert repr(cidr) in str(info.value)


def test_parse_proxies_accepts_both_families() -> None:
    """IPv4 and IPv6 networks and bare addresses parse into networks."""
    assert [str(n) for n in parse_proxies(["10.0.0.0/8", " fd00::/8 ", "192.0.2.7"])] == [
        "10.0.0.0/8",
        "fd00::/8",
        "192.0.2.7/32",
    ]
