"""The benchmark scenario shared by bench.py, bare_app.py and locustfile.py.

One tenant whose voice route is inline TwiML (a `say` route; an `upstream` one for the proxied
targets), limits present but far above any rate this machine can reach, and inbound-call
webhooks shaped like Twilio's: the same fields, headers and encoding, a different CallSid (and
caller) in each body, signed with twilio's own RequestValidator for the exact URL of the target.

No import of `gateway` here: the baseline app must not load the code it is compared with.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

ROOT = Path(__file__).resolve().parent.parent
DEMO_ENV = ROOT / "policies" / "demo.env"

TENANT = "bench"
ACCOUNT_SID = "AC" + "b" * 32
NUMBER = "+15550100001"
TOKEN_ENV = "ACME_TWILIO_AUTH_TOKEN"  # a demo.env variable: the bench tenant borrows its token
VOICE_PATH = "/twilio/voice"
SMS_PATH = "/twilio/sms"

SAY_TEXT = "Thanks for calling. This line answers every call with this message."
SAY_VOICE = "Polly.Joanna"

# 1e6 tokens a second, burst 1e6: never refused here, yet both buckets are charged per call.
RATE = 1_000_000

SAY_ACTION = f'say: {{text: "{SAY_TEXT}", voice: {SAY_VOICE}}}'


def policy_yaml(action: str = SAY_ACTION) -> str:
    """The bench tenant's policy, its voice route's action (one line of YAML) given."""
    return f"""\
# Written by loadtest/bench.py: one tenant, one voice route, limits that never refuse.
twilio:
  account_sid: {ACCOUNT_SID}
  auth_token_env: {TOKEN_ENV}
numbers: ["{NUMBER}"]
limits:
  webhooks: {{rate: {RATE}, per: second, burst: {RATE}}}
  voice: {{rate: {RATE}, per: second, burst: {RATE}}}
routes:
  - name: welcome
    match: {{kind: voice}}
    {action}
"""


POLICY_YAML = policy_yaml()  # a say route: a static voice answer

# The same tenant with prices and a daily budget far above what a run spends: every webhook is
# charged to the day and holds its call's estimate (5 minutes), each call a new hold, as a busy
# budgeted tenant's are; never refused.
BUDGET_YAML = """\
prices: {webhook: 0.0001, voice_minute: 0.0085}
budget: {daily_usd: 1000000, call_reserve_minutes: 5}
"""
BUDGET_POLICY_YAML = POLICY_YAML + BUDGET_YAML


def say_twiml() -> bytes:
    """What the gateway answers on the bench route: rendered as gateway/routing/twiml.say does."""
    response = VoiceResponse()
    response.say(SAY_TEXT, voice=SAY_VOICE)
    response.hangup()
    return str(response.to_xml()).encode()


def demo_env(path: Path = DEMO_ENV) -> dict[str, str]:
    """The demo tokens of policies/demo.env; variables already in the environment win."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    values.update({k: v for k, v in os.environ.items() if k in values})
    return values


# Where callers are "from", as Twilio's geo lookup reports it (values with spaces exercise the
# '+' decoding a real body needs).
_PLACES = (
    ("SAN FRANCISCO", "CA", "94105"),
    ("NEW YORK", "NY", "10001"),
    ("AUSTIN", "TX", "73301"),
    ("CHICAGO", "IL", "60601"),
    ("SEATTLE", "WA", "98101"),
)


def voice_params(rng: random.Random, to: str = NUMBER, account_sid: str = ACCOUNT_SID) -> dict[str, str]:
    """The 26 fields Twilio posts for an inbound call (CallToken left out), one fresh CallSid."""
    caller = f"+1555{rng.randrange(10**7):07d}"
    city, state, zip_code = rng.choice(_PLACES)
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + rng.randbytes(16).hex(),
        "CallStatus": "ringing",
        "Called": to,
        "CalledCity": "",
        "CalledCountry": "US",
        "CalledState": "",
        "CalledZip": "",
        "Caller": caller,
        "CallerCity": city,
        "CallerCountry": "US",
        "CallerState": state,
        "CallerZip": zip_code,
        "Direction": "inbound",
        "From": caller,
        "FromCity": city,
        "FromCountry": "US",
        "FromState": state,
        "FromZip": zip_code,
        "StirVerstat": "TN-Validation-Passed-A",
        "To": to,
        "ToCity": "",
        "ToCountry": "US",
        "ToState": "",
        "ToZip": "",
    }


def sms_params(rng: random.Random, to: str, account_sid: str, body: str) -> dict[str, str]:
    """The fields Twilio posts for an inbound SMS."""
    caller = f"+1555{rng.randrange(10**7):07d}"
    sid = "SM" + rng.randbytes(16).hex()
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": caller,
        "FromCity": "SAN FRANCISCO",
        "FromCountry": "US",
        "FromState": "CA",
        "FromZip": "94105",
        "MessageSid": sid,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "To": to,
        "ToCity": "",
        "ToCountry": "US",
        "ToState": "",
        "ToZip": "",
    }


def sign(token: str, url: str, params: Mapping[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it (twilio's code, not the gateway's)."""
    return str(RequestValidator(token).compute_signature(url, dict(params)))


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """One webhook ready to send: the form body and the headers Twilio would send with it."""

    body: bytes
    headers: dict[str, str]

    def raw(self, host: str, path: str, idempotency: str | None) -> tuple[bytes, bytes]:
        """The HTTP/1.1 request as bytes, split where the idempotency token goes (wrk adds it)."""
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        head = "\r\n".join(lines) + "\r\n"
        tail = f"Content-Length: {len(self.body)}\r\n\r\n"
        if idempotency is not None:
            head += f"I-Twilio-Idempotency-Token: {idempotency}"
            tail = "\r\n" + tail
        return head.encode(), tail.encode() + self.body


def twilio_headers(signature: str) -> dict[str, str]:
    """The headers Twilio's webhook client sends, bar the idempotency token and length."""
    return {
        "User-Agent": "TwilioProxy/1.1",
        "Accept": "*/*",
        "Cache-Control": "max-age=259200",
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Home-Region": "us1",
        "X-Twilio-Signature": signature,
    }


def signed_voice_requests(url: str, token: str, count: int, seed: int = 1) -> list[SignedRequest]:
    """`count` different inbound-call webhooks for `url`, each signed for it."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        params = voice_params(rng)
        out.append(SignedRequest(urlencode(params).encode(), twilio_headers(sign(token, url, params))))
    return out


def idempotency_token() -> str:
    """Shaped like Twilio's (a UUID-like hex string); unique, so no request is a retry."""
    return secrets.token_hex(16)
