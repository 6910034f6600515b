"""Admission tokens: proof, carried by Twilio from our webhook answer to our Media Streams
endpoint, that this gateway admitted this call's stream (and which slot it holds).

The webhook's answer puts the token in a `<Parameter>`; Twilio sends it back in the `start`
message's customParameters. It binds the tenant, the call, a nonce and the budget hold, and
expires: a stream for another call cannot claim the slot, and the nonce is claimed once (the
lease store remembers it for the token's life), so a replayed `start` cannot open a second
relay. It is keyed with the tenant's
Twilio auth token, which every instance has, so any instance can check a token another issued.
Pure: the time is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

VERSION = "v2"
PARAMETER = "switchyard_admission"  # the <Parameter> name; the gateway drops it before the runtime sees it
_MAC_BYTES = 16  # 128 bits: enough for a token that lives minutes
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")  # fullmatch: "$" would take a trailing newline
_MAX_TOKEN = 400


@dataclass(frozen=True, slots=True)
class Admission:
    """What a valid token says: the route that admitted the stream, its nonce (the id its
    stream's lease is claimed under, once), the µ$ held on the budget (0: none; the hold is
    settled by its amount as held, whatever the policy says by the stream's end) and until
    when the stream may start (wall-clock seconds)."""

    route: str
    nonce: str
    held: int
    expires: int


def _mac(key: bytes, tenant: str, call_sid: str, route: str, nonce: str, held: int, expires: int) -> str:
    message = f"{VERSION}\x00{tenant}\x00{call_sid}\x00{route}\x00{nonce}\x00{held}\x00{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:_MAC_BYTES]
    return _b64(digest)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_nonce() -> str:
    return secrets.token_urlsafe(12)  # 96 bits: 16 characters of [A-Za-z0-9_-]


def issue(key: bytes, tenant: str, call_sid: str, route: str, nonce: str, held: int, expires: int) -> str:
    """The token for a call's stream; `held` 0 when nothing was held on its budget."""
    if not _NONCE.fullmatch(nonce):
        raise ValueError("a nonce is 8-64 characters of [A-Za-z0-9_-]")
    if held < 0:
        raise ValueError("a hold is 0 µ$ or more")
    mac = _mac(key, tenant, call_sid, route, nonce, held, expires)
    return f"{VERSION}.{_b64(route.encode())}.{nonce}.{held}.{expires}.{mac}"


def check(keys: Sequence[bytes], tenant: str, call_sid: str, token: str, now: float) -> Admission | None:
    """The admission a token proves for this call, or None (forged, another call's, expired).

    keys: the tenant's auth tokens (the current and, during a rotation, the previous one).
    The token is unverified input (Twilio carries what the `start` says): anything but a token
    of ours is None, never an exception (hmac.compare_digest raises TypeError on a non-ASCII
    str, base64 decoding ValueError)."""
    # Every token issued is ASCII: anything else is refused before any part of it is decoded.
    if not token or len(token) > _MAX_TOKEN or not token.isascii():
        return None
    parts = token.split(".")
    if len(parts) != 6 or parts[0] != VERSION or not all(_number(part) for part in parts[3:5]):
        return None
    _, encoded_route, nonce, held_text, expires_text, mac = parts
    if not _NONCE.fullmatch(nonce):
        return None
    try:
        route = base64.urlsafe_b64decode(encoded_route + "=" * (-len(encoded_route) % 4)).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    held, expires = int(held_text), int(expires_text)
    # Every key is tried (no early exit), each comparison in constant time.
    valid = False
    given = mac.encode("ascii")
    for key in keys:
        valid |= hmac.compare_digest(_mac(key, tenant, call_sid, route, nonce, held, expires).encode("ascii"), given)
    if not valid or now > expires:
        return None
    return Admission(route, nonce, held, expires)


def _number(text: str) -> bool:
    """ASCII digits only (str.isdigit() takes '²' and other digits int() refuses), bounded."""
    return 0 < len(text) <= 15 and text.isascii() and text.isdigit()
