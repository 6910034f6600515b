"""The URL Twilio signed, rebuilt from what the gateway received.

Behind a TLS-terminating proxy the gateway sees ``http://10.0.0.5:8080/...`` while
Twilio signed ``https://gw.example.com/...`` (Twilio error 57012). Either a public
base URL is configured, or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` are read,
and only from a peer inside a configured trusted-proxy network: anyone else could
set them to make a replayed signature fit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


def parse_proxies(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Trusted proxy networks from CIDRs (``10.0.0.0/8``, ``fd00::/8``, or a bare address).

    Raises ValueError naming the value that is not a network.
    """
    networks: list[Network] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"trusted proxy {cidr!r} is not an IP network: {exc}") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class PublicUrl:
    """How to rebuild the signed URL; built once from settings.

    ``base`` is the public origin, optionally with a path prefix the proxy strips
    (``https://x.com/gw``); a trailing slash is dropped. When set, it wins over
    everything the request says.
    """

    base: str | None = None
    trusted_proxies: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if self.base is None:
            return
        base = self.base.strip()
        try:
            parts = urlsplit(base)
        except ValueError as exc:
            raise ValueError(f"public base URL {self.base!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"public base URL {self.base!r} must be an absolute http:// or https:// URL")
        if "?" in base or "#" in base:
            raise ValueError(f"public base URL {self.base!r} must not have a query or fragment")
        if any(c.isspace() for c in base):
            raise ValueError(f"public base URL {self.base!r} must not contain whitespace")
        # urlsplit lower-cases the scheme; so does the URL Twilio signs.
        base = parts.scheme + base[len(parts.scheme) :]
        object.__setattr__(self, "base", base.rstrip("/"))

    def rebuild(
        self,
        *,
        scheme: str,
        host: str,
        path_qs: str,
        peer: str | None,
        forwarded_proto: str | None,
        forwarded_host: str | None,
        websocket: bool = False,
    ) -> str:
        """The full URL Twilio requested.

        ``path_qs`` is the raw path and query as received (aiohttp's ``raw_path``),
        ``peer`` the remote IP. ``websocket`` turns http/https into ws/wss: Twilio
        signs a Media Stream's upgrade request over its ``wss://`` URL.
        """
        if self.base is not None:
            url = self.base + path_qs
        else:
            if self.trusted_proxies and self._trusted(peer):
                # A proxy chain appends: the first value is what the client (Twilio) used.
                scheme = _first(forwarded_proto) or scheme
                host = _first(forwarded_host) or host
            url = f"{scheme.lower()}://{host}{path_qs}"
        if websocket:
            head, sep, rest = url.partition("://")
            url = _WEBSOCKET_SCHEMES.get(head, head) + sep + rest
        return url

    def _trusted(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            mapped = address.ipv4_mapped
            if any(mapped in network for network in self.trusted_proxies):
                return True
        return any(address in network for network in self.trusted_proxies)


def _first(header: str | None) -> str:
    if not header:
        return ""
    return header.split(",", 1)[0].strip()
