"""POST /api/v1/after-hours: the call (ringing 120 s) and the text at once, against the Twilio
REST stand-in; both legs' results in one answer, and one leg failing never cancels the other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.support.clock import FakeClock, stepping
from tests.support.gateway import start_gateway
from tests.support.twilio import ACME_SID, ENV
from tests.support.twilio_rest import TwilioRestStandIn

Client = TestClient[web.Request, web.Application]
SECRET = "after-hours-test-jwt-secret-of-32-bytes"
NUMBER = "+15550003333"
POLICY = """\
twilio: {{account_sid: {sid}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{number}"]
limits: {{concurrent_calls: {concurrent}}}
api: {{jwt_secret_env: AFTER_HOURS_JWT}}
outbound: {{ring_timeout_s: 600, urls: ["https://runtime.acme.example/after-hours.xml"]}}
"""
RACE = {
    "to": "+15557654321",
    "from": NUMBER,
    "body": "We missed you: call us back, or reply here.",
    "url": "https://runtime.acme.example/after-hours.xml",
}


async def _race(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, concurrent: int = 5
) -> tuple[int, dict[str, Any]]:
    (tmp_path / "acme.yaml").write_text(POLICY.format(sid=ACME_SID, number=NUMBER, concurrent=concurrent))
    env = {**ENV, "AFTER_HOURS_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url}
    client: Client = await start_gateway(aiohttp_client, tmp_path, env, clock, sleep=stepping(clock))
    claims = {"tenant": "acme", "aud": "switchyard", "exp": int(time.time()) + 300}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    if concurrent == 1:  # the one slot taken by a call already live
        taken = await client.post("/api/v1/calls", json={k: v for k, v in RACE.items() if k != "body"}, headers=headers)
        assert taken.status == 201
    response = await client.post("/api/v1/after-hours", json=RACE, headers=headers)
    return response.status, await response.json()


async def test_both_legs_go_at_once_and_answer_together(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """The call (ring timeout 120 s) and the text are both sent; one answer carries both."""
    status, body = await _race(aiohttp_client, clock, tmp_path, twilio)
    assert status == 200
    assert body["call"]["status"] == 201 and body["call"]["sid"].startswith("CA")
    assert body["message"]["status"] == 201 and body["message"]["sid"].startswith("SM")
    (call,) = twilio.calls()
    assert call["Timeout"] == "120" and call["Url"] == RACE["url"]
    (text,) = [m.params for m in twilio.messages]
    assert text["Body"] == RACE["body"]


async def test_a_failing_call_leaves_the_text(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """Twilio refuses the call (21211): the call leg reports it, the text is sent all the same."""
    twilio.fail = [(400, 21211)]
    status, body = await _race(aiohttp_client, clock, tmp_path, twilio)
    assert status == 200
    assert (body["call"]["status"], body["call"]["twilio_code"]) == (502, 21211)
    assert body["message"]["status"] == 201 and len(twilio.messages) == 1


async def test_a_failing_text_leaves_the_call(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """Twilio refuses the text: the message leg reports it, the call is placed all the same."""
    twilio.fail_messages = [(400, 21610)]  # the recipient unsubscribed
    status, body = await _race(aiohttp_client, clock, tmp_path, twilio)
    assert status == 200
    assert (body["message"]["status"], body["message"]["twilio_code"]) == (502, 21610)
    assert body["call"]["status"] == 201 and len(twilio.calls()) == 1


async def test_a_call_over_its_limit_leaves_the_text(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """concurrent_calls 1, taken: the call leg is refused (429, with when to retry); the text goes."""
    status, body = await _race(aiohttp_client, clock, tmp_path, twilio, concurrent=1)
    assert status == 200
    assert body["call"]["status"] == 429 and body["call"]["retry_after"] >= 1
    assert body["message"]["status"] == 201
