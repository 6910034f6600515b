"""Tenants' JSON Web Key Sets, fetched through the outbound seam and kept.

A set is fetched when a token first needs it, and again when it is older than the tenant's
`jwks_refresh_s` or when a token names a kid it lacks (a key rotated in), but for that never
more often than MIN_REFETCH: tokens with made-up kids cannot make us hammer the tenant's
identity provider. One fetch at a time per URL (concurrent requests wait for the same one); a
failed fetch keeps the keys we had, so an identity provider that is down does not log every
client out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from gateway.auth.keys import from_jwks
from gateway.clock import Clock
from gateway.errors import UpstreamError
from gateway.policy.tenant import ApiKey

log = logging.getLogger(__name__)

MIN_REFETCH = 30.0  # s between fetches of one set for an unknown kid
MAX_JWKS_BYTES = 256 * 1024

Fetch = Callable[[str], Awaitable[bytes]]


class JwksUnavailable(Exception):
    """No key set could be had for a URL (never fetched, or only failures so far)."""


@dataclass(slots=True)
class _Entry:
    keys: dict[str, ApiKey] = field(default_factory=dict)
    fetched: float | None = None  # when the set was last fetched (or tried), on the clock
    ok: bool = False  # a fetch has succeeded: `keys` is a real set
    pending: asyncio.Future[None] | None = None


class JwksCache:
    def __init__(self, fetch: Fetch, clock: Clock) -> None:
        self._fetch = fetch
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def key(self, url: str, kid: str, refresh: float) -> ApiKey | None:
        """The key `kid` of the set at `url`; None if the set has no such key. Raises
        JwksUnavailable when no set has ever been fetched from `url`."""
        entry = self._entries.setdefault(url, _Entry())
        now = self._clock()
        age = None if entry.fetched is None else now - entry.fetched
        if age is None or age >= refresh or (kid not in entry.keys and age >= MIN_REFETCH):
            await self._refresh(url, entry)
        if not entry.ok:
            raise JwksUnavailable(url)
        return entry.keys.get(kid)

    async def _refresh(self, url: str, entry: _Entry) -> None:
        if entry.pending is not None:
            await asyncio.shield(entry.pending)
            return
        entry.pending = asyncio.get_running_loop().create_future()
        try:
            entry.fetched = self._clock()
            try:
                document = orjson.loads(await self._fetch(url))
                keys = from_jwks(document if isinstance(document, dict) else {})
            except (UpstreamError, orjson.JSONDecodeError, ValueError) as exc:
                # Never the body: only why. The keys we had stay.
                log.warning(
                    "JWKS %s not refreshed: %s", url, exc if isinstance(exc, UpstreamError) else "not a JWK Set"
                )
                return
            entry.keys, entry.ok = keys, True
        finally:
            entry.pending.set_result(None)
            entry.pending = None
