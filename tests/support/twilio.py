"""Signed Twilio requests for tests. Signatures come from twilio's RequestValidator, never ours."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

ACME_TOKEN = "test-acme-auth-token-000000000001"
ACME_OLD_TOKEN = "test-acme-auth-token-previous-001"
BISTRO_TOKEN = "test-bistro-auth-token-0000000002"
NORTHWIND_TOKEN = "test-northwind-auth-token-00000003"
NORTHWIND_JWT = "test-northwind-jwt-secret-at-least-32-bytes"
DEMO_OPENAI_KEY = "test-demo-openai-key-0000000004"  # bistro's `ask` route (the demo runtime's model)

ENV = {
    "ACME_TWILIO_AUTH_TOKEN": ACME_TOKEN,
    "ACME_TWILIO_AUTH_TOKEN_OLD": ACME_OLD_TOKEN,
    "BISTRO_TWILIO_AUTH_TOKEN": BISTRO_TOKEN,
    "NORTHWIND_TWILIO_AUTH_TOKEN": NORTHWIND_TOKEN,
    "NORTHWIND_API_JWT_SECRET": NORTHWIND_JWT,
    "DEMO_OPENAI_API_KEY": DEMO_OPENAI_KEY,
}

ACME_SID = "AC00000000000000000000000000000001"
ACME_NUMBER = "+15551230001"
ACME_AFTER_HOURS = "+15551230002"
BISTRO_NUMBER = "+15552340001"
CALLER = "+15557654321"


class MultiDict:
    """The getall() mapping twilio's validator reads multi-valued parameters from."""

    def __init__(self, params: Mapping[str, Sequence[str]]) -> None:
        self._params = params

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def getall(self, name: str) -> list[str]:
        return list(self._params[name])


def voice_params(to: str = ACME_NUMBER, caller: str = CALLER, **extra: str) -> dict[str, str]:
    """The fields Twilio posts for an inbound call, as far as routing and lookup care."""
    return {
        "AccountSid": ACME_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + "a" * 32,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": caller,
        "To": to,
        "Caller": caller,
        "Called": to,
        **extra,
    }


def call_sid(n: int) -> str:
    """The CallSid of a test's n-th call: CA and n in 32 hex digits."""
    return f"CA{n:032x}"


def call_form(to: str, sid: str, account_sid: str = ACME_SID, **extra: str) -> dict[str, str]:
    """The fewest fields of a call's webhook a tenant is found and routed by: account, call, caller, number."""
    return {"AccountSid": account_sid, "CallSid": sid, "From": CALLER, "To": to, **extra}


def sms_params(to: str = BISTRO_NUMBER, body: str = "hello", **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC00000000000000000000000000000002",
        "MessageSid": "SM" + "b" * 32,
        "From": CALLER,
        "To": to,
        "Body": body,
        **extra,
    }


def signed_form(token: str, url: str, params: Mapping[str, str]) -> tuple[dict[str, str], bytes]:
    """Headers and body of a form webhook exactly as Twilio would send it to `url`."""
    signature = RequestValidator(token).compute_signature(url, dict(params))
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    return headers, urlencode(params).encode()


def signed_json(token: str, url: str, body: bytes) -> tuple[str, dict[str, str]]:
    """The URL with bodySHA256 and the headers of a JSON webhook, as Twilio builds them."""
    digest = hashlib.sha256(body).hexdigest()
    sep = "&" if "?" in url else "?"
    full = f"{url}{sep}bodySHA256={digest}"
    signature = RequestValidator(token).compute_signature(full, {})
    return full, {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
