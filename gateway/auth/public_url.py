"""The URL Twilio signed, rebuilt from what the gateway received.

Behind a TLS-terminating proxy the gateway sees ``http://10.0.0.5:8080/...`` while
Twilio signed ``https://gw.example.com/...`` (Twilio error 57012). Either public base
URLs are configured, or ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` / ``Host`` are
read, and only from a peer inside a configured trusted-proxy network: anyone else
could set them to make a signature captured elsewhere (or made for their own host
with a leaked token) fit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


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

    Each of ``bases`` is a public origin Twilio calls, optionally with a path prefix
    the proxy strips (``https://x.com/gw``); a trailing slash is dropped. A configured
    base wins over everything the request says: with several, the request's Host (or
    a trusted proxy's ``X-Forwarded-Host``) only chooses among them. With none, only a
    trusted proxy's request can say which URL was called; anyone else's Host header
    could name any host a captured signature was made for.
    """

    bases: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    # Derived in __post_init__. `fixed` lets the handler's hot path do `fixed + raw_path`.
    fixed: str | None = field(init=False, default=None)
    first: str | None = field(init=False, default=None)
    _by_host: dict[str, str] = field(init=False, default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.bases, str):
            raise TypeError(f"PublicUrl bases must be a tuple of URLs, not the string {self.bases!r}")
        bases: list[str] = []
        for raw in self.bases:
            base, host_keys = _normalise(raw)
            if base in bases:
                continue
            for key in host_keys:
                other = self._by_host.get(key)
                if other is not None:
                    raise ValueError(
                        f"public base URLs {other!r} and {raw!r} have the same host; the request's Host"
                        " header chooses among them, so each needs a host (or port) of its own"
                    )
            for key in host_keys:
                self._by_host[key] = base
            bases.append(base)
        object.__setattr__(self, "bases", tuple(bases))
        object.__setattr__(self, "first", bases[0] if bases else None)
        object.__setattr__(self, "fixed", bases[0] if len(bases) == 1 else None)

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
    ) -> str | None:
        """The full URL Twilio requested, or None when nothing trustworthy says which.

        ``path_qs`` is the raw path and query as received (aiohttp's ``raw_path``),
        ``peer`` the remote IP. ``websocket`` turns http/https into ws/wss: Twilio
        signs a Media Stream's upgrade request over its ``wss://`` URL. None (no base
        configured, peer not a trusted proxy) means the signature cannot be checked.
        """
        if self.fixed is not None:
            url = self.fixed + path_qs
        elif self.first is not None:
            if self.trusted_proxies and forwarded_host and self._trusted(peer):
                host = _first(forwarded_host) or host
            # No match: the first base; a signature made for another host then fails.
            url = self._by_host.get(host.lower(), self.first) + path_qs
        elif self.trusted_proxies and self._trusted(peer):
            # A proxy chain appends: the first value is what the client (Twilio) used.
            scheme = _first(forwarded_proto) or scheme
            host = _first(forwarded_host) or host
            url = f"{scheme.lower()}://{host}{path_qs}"
        else:
            return None
        if websocket:
            head, sep, rest = url.partition("://")
            url = WEBSOCKET_SCHEMES.get(head, head) + sep + rest
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


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalise(raw: str) -> tuple[str, tuple[str, ...]]:
    """A base without trailing slash, lower-case scheme; and the Host header values that name it."""
    base = raw.strip()
    try:
        parts = urlsplit(base)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"public base URL {raw!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"public base URL {raw!r} must be an absolute http:// or https:// URL")
    if "?" in base or "#" in base:
        raise ValueError(f"public base URL {raw!r} must not have a query or fragment")
    if any(c.isspace() for c in base):
        raise ValueError(f"public base URL {raw!r} must not contain whitespace")
    if "@" in parts.netloc:
        raise ValueError(f"public base URL {raw!r} must not carry credentials")
    # urlsplit lower-cases the scheme; so does the URL Twilio signs.
    base = parts.scheme + base[len(parts.scheme) :]
    # Host header values naming this base: as written, and with/without the scheme's default port.
    host = parts.netloc.lower()
    name = host.rsplit(":", 1)[0] if port is not None else host
    default = _DEFAULT_PORTS[parts.scheme]
    keys = [host]
    if port is None:
        keys.append(f"{host}:{default}")
    elif port == default:
        keys.append(name)
    return base.rstrip("/"), tuple(keys)
