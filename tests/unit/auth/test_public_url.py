"""Rebuilding the URL Twilio signed from settings, the request and trusted forwarded headers."""

from __future__ import annotations

import pytest

from gateway.auth.public_url import PublicUrl, parse_proxies

PROXIES = parse_proxies(["10.0.0.0/8", "fd00::/8", "192.0.2.7"])
BEHIND_PROXY = PublicUrl(trusted_proxies=PROXIES)


def rebuild(
    public: PublicUrl,
    *,
    peer: str | None = "10.1.2.3",
    proto: str | None = "https",
    host: str | None = "gw.example.com",
    path_qs: str = "/twilio/voice?x=1",
    websocket: bool = False,
) -> str:
    return public.rebuild(
        scheme="http",
        host="10.0.0.5:8080",
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
    public = PublicUrl(base=base, trusted_proxies=PROXIES)
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
def test_forwarded_headers_ignored_from_untrusted_peer(peer: str | None) -> None:
    """Anyone outside the trusted networks gets the request's own scheme and host."""
    assert rebuild(BEHIND_PROXY, peer=peer) == "http://10.0.0.5:8080/twilio/voice?x=1"


def test_no_trusted_proxies_ignores_forwarded_headers() -> None:
    """With no proxies configured, forwarded headers never count."""
    assert rebuild(PublicUrl(), peer="10.1.2.3") == "http://10.0.0.5:8080/twilio/voice?x=1"


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
    ("public", "expected"),
    [
        pytest.param(PublicUrl(base="https://gw.example.com"), "wss://gw.example.com/s", id="base"),
        pytest.param(BEHIND_PROXY, "wss://gw.example.com/s", id="forwarded"),
        pytest.param(PublicUrl(), "ws://10.0.0.5:8080/s", id="direct"),
    ],
)
def test_websocket_scheme(public: PublicUrl, expected: str) -> None:
    """A WebSocket upgrade is signed over ws:// or wss://, so the scheme is mapped."""
    assert rebuild(public, path_qs="/s", websocket=True) == expected


def test_raw_path_kept_verbatim() -> None:
    """The path and query are used as received, percent-escapes and all."""
    path_qs = "/t/acme%20co/voice?a=%2F&b=+"
    assert rebuild(PublicUrl(base="https://gw.example.com"), path_qs=path_qs) == ("https://gw.example.com" + path_qs)


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
    ],
)
def test_bad_base_rejected(base: str) -> None:
    """A base that is not an absolute http(s) URL without query or fragment is refused by value."""
    with pytest.raises(ValueError, match="public base URL") as info:
        PublicUrl(base=base)
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
