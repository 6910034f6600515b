"""POST /api/v1/messages against the Twilio REST stand-in: what Twilio is sent, the sms bucket,
the segments' cost held on the budget before sending and booked from Twilio's own count."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import SERVICES
from gateway.limits.budget import utc_day
from tests.support.clock import FakeClock
from tests.support.gateway import start_gateway
from tests.support.twilio import ACME_SID, ENV
from tests.support.twilio_rest import TwilioRestStandIn

Client = TestClient[web.Request, web.Application]
SECRET = "messages-test-jwt-secret-of-32-bytes-at-least"
NUMBER = "+15550002222"
SEGMENT = 7900  # µ$: sms_segment 0.0079
POLICY = """\
twilio: {{account_sid: {sid}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{number}"]
limits: {{sms: {{rate: 2, per: minute, burst: 2}}}}
api: {{jwt_secret_env: MESSAGES_JWT}}
outbound: {{to_allow: ["+1"]}}
prices: {{sms_segment: 0.0079}}
budget: {{daily_usd: {daily}}}
"""


async def _client(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, daily: float = 1.0
) -> Client:
    (tmp_path / "acme.yaml").write_text(POLICY.format(sid=ACME_SID, number=NUMBER, daily=daily))
    env = {**ENV, "MESSAGES_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url}
    return await start_gateway(aiohttp_client, tmp_path, env, clock, wall=lambda: 1_796_600_000.0)


async def _send(client: Client, text: str, scope: str = "messages:write") -> tuple[int, dict[str, Any]]:
    claims = {"tenant": "acme", "aud": "switchyard", "exp": int(time.time()) + 300, "scope": scope}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    response = await client.post(
        "/api/v1/messages", json={"to": "+15557654321", "from": NUMBER, "body": text}, headers=headers
    )
    return response.status, await response.json(content_type=response.content_type)


async def _spent(client: Client) -> tuple[int, int]:
    services = client.app[SERVICES]
    await services.recorder.settled()
    spend = await services.ledger.spend("acme", utc_day(services.wall()))
    return spend.total, spend.reserved


async def test_a_text_is_sent_and_its_segments_booked_from_twilios_count(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """201 with the SID and Twilio's segment count; Twilio got To/From/Body; the day's spend is
    Twilio's count of segments (2 here, where our estimate of the text was 1), nothing held; no
    StatusCallback asked for (the policy names no status callback to forward statuses to)."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio)
    twilio.segments = "2"
    status, body = await _send(client, "Your table for two is ready.")
    assert status == 201 and body["sid"].startswith("SM") and body["segments"] == 2
    (sent,) = [m.params for m in twilio.messages]
    assert (sent["To"], sent["From"], sent["Body"]) == ("+15557654321", NUMBER, "Your table for two is ready.")
    assert "StatusCallback" not in sent
    assert await _spent(client) == (2 * SEGMENT, 0)


async def test_a_text_over_the_budget_is_refused_before_twilio(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """The estimate (2 UCS-2 segments) does not fit what is left of the day: 429, not sent."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, daily=0.01)
    status, problem = await _send(client, "ж" * 100)  # UCS-2: 67 characters a segment -> 2
    assert status == 429 and problem["title"] == "Daily budget exhausted"
    assert twilio.messages == [] and await _spent(client) == (0, 0)


async def test_the_sms_bucket_limits_texts(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """sms: burst 2: the third text in a row gets 429 with Retry-After, and is not sent."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio)
    assert [(await _send(client, f"hi {n}"))[0] for n in range(3)] == [201, 201, 429]
    assert len(twilio.messages) == 2


async def test_a_twilio_error_releases_the_hold(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """Twilio refusing the text (21211): 502 with its code, and the estimate no longer held."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio)
    twilio.fail_messages = [(400, 21211)]
    status, problem = await _send(client, "hello")
    assert status == 502 and problem["twilio_code"] == 21211
    assert await _spent(client) == (0, 0)


async def test_a_token_without_messages_write_is_403(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """Sending a text needs the messages:write scope when the token states scopes."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio)
    status, _ = await _send(client, "hello", scope="calls:write")
    assert status == 403 and twilio.messages == []
