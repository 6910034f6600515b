"""Outbound calls ask the day's budget first: the call's estimate is held before calls.create, a
day that cannot hold it answers 429 (and no call reaches Twilio), the final status releases the
hold and books the real minutes; a failed create releases it at once. Against the Twilio REST
stand-in, callbacks signed by twilio's RequestValidator."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import SERVICES
from gateway.limits.budget import Spend, utc_day
from tests.support.clock import FakeClock, stepping
from tests.support.gateway import PUBLIC, post, start_gateway
from tests.support.redis_server import RedisServer
from tests.support.twilio import ACME_SID, ACME_TOKEN, ENV
from tests.support.twilio_rest import TwilioRestStandIn
from tests.support.waiting import until

Client = TestClient[web.Request, web.Application]
SECRET = "outbound-budget-jwt-secret-of-32-bytes"
NUMBER = "+15550004444"
# A minute costs $0.01 and a call holds 5 of them ($0.05) until it ends: $0.12 a day holds two.
POLICY = f"""\
twilio: {{account_sid: {ACME_SID}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{NUMBER}"]
limits: {{concurrent_calls: 10}}
api: {{jwt_secret_env: BUDGET_JWT}}
outbound: {{urls: ["https://runtime.acme.example/outbound.xml"]}}
prices: {{voice_minute: 0.01, sms_segment: 0.01}}
budget: {{daily_usd: 0.12, call_reserve_minutes: 5}}
"""
HOLD = 50_000  # µ$
CALL = {"to": "+15557654321", "from": NUMBER, "url": "https://runtime.acme.example/outbound.xml"}


def _headers() -> dict[str, str]:
    claims = {"tenant": "acme", "aud": "switchyard", "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


async def _gateway(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn) -> Client:
    (tmp_path / "acme.yaml").write_text(POLICY)
    env = {**ENV, "BUDGET_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url}
    client: Client = await start_gateway(aiohttp_client, tmp_path, env, clock, sleep=stepping(clock))
    return client


async def _place(client: Client) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/v1/calls", json=CALL, headers=_headers())
    return response.status, await response.json(content_type=response.content_type)


async def _spend(client: Client) -> Spend:
    services = client.app[SERVICES]
    return await services.ledger.spend("acme", utc_day(services.wall()))


async def _booked(client: Client) -> bool:
    return bool((await _spend(client)).parts)


async def _ended(client: Client, twilio: TwilioRestStandIn, sid: str, seconds: int) -> None:
    (sent,) = [a.params for a in twilio.arrivals if a.params.get("_sid") == sid]
    form = {
        "AccountSid": ACME_SID,
        "CallSid": sid,
        "CallStatus": "completed",
        "CallDuration": str(seconds),
        "Direction": "outbound-api",
        "From": NUMBER,
        "To": CALL["to"],
    }
    code, _ = await post(client, sent["StatusCallback"].removeprefix(PUBLIC), form, ACME_TOKEN)
    assert code == 204


async def test_a_day_that_cannot_hold_another_calls_estimate_refuses_it(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """Two calls' estimates fit in the day, the third gets 429 problem JSON and never reaches
    Twilio; a call's end releases its hold and books its minutes, which lets one more call go."""
    client = await _gateway(aiohttp_client, clock, tmp_path, twilio)
    first, _ = await _place(client)
    second, body = await _place(client)
    third, refused = await _place(client)
    assert (first, second, third) == (201, 201, 429)
    assert refused["title"] == "Daily budget exhausted" and len(twilio.calls()) == 2
    assert await _spend(client) == Spend(utc_day(client.app[SERVICES].wall()), {}, 2 * HOLD)

    await _ended(client, twilio, body["sid"], seconds=61)  # two started minutes: $0.02
    assert (await _spend(client)).reserved == HOLD  # released while Twilio waited
    # The minutes are booked with the request's record, at its end.
    await until(lambda: _booked(client))
    assert (await _spend(client)).parts == {"voice": 20_000}
    again, _ = await _place(client)  # 20,000 + 2 x 50,000 <= 120,000
    assert again == 201 and len(twilio.calls()) == 3
    over, _ = await _place(client)
    assert over == 429 and len(twilio.calls()) == 3


async def test_a_call_twilio_refuses_gives_its_hold_back(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """calls.create fails (21211): the estimate is released at once, so the day still holds two."""
    client = await _gateway(aiohttp_client, clock, tmp_path, twilio)
    twilio.fail = [(400, 21211)]
    status, _ = await _place(client)
    assert status == 502 and (await _spend(client)).reserved == 0
    assert [(await _place(client))[0] for _ in range(3)] == [201, 201, 429]


async def test_the_after_hours_call_leg_asks_the_budget_too(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """With the day's estimates taken, the after-hours race's call leg is refused (429) and no
    call reaches Twilio; its text leg is judged on its own (its segment fits)."""
    client = await _gateway(aiohttp_client, clock, tmp_path, twilio)
    assert [(await _place(client))[0] for _ in range(2)] == [201, 201]
    race = {**CALL, "body": "We missed you."}
    headers = _headers()
    claims = jwt.decode(headers["Authorization"].split()[1], options={"verify_signature": False})
    claims["scope"] = "calls:write messages:write"
    headers = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    response = await client.post("/api/v1/after-hours", json=race, headers=headers)
    body = await response.json()
    assert body["call"]["status"] == 429 and len(twilio.calls()) == 2
    assert body["message"]["status"] == 201


@pytest.mark.redis
@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("local", 201)])
async def test_a_call_while_the_ledger_is_down_follows_the_tenants_rule(
    aiohttp_client: Any,
    clock: FakeClock,
    tmp_path: Path,
    twilio: TwilioRestStandIn,
    redis_servers: Callable[..., RedisServer],
    mode: str,
    status: int,
) -> None:
    """Redis down: a `closed` tenant's call gets 503 "Budget unavailable" (the ledger cannot say,
    try again), not the 429 of a spent day; a `local` one is held on this instance's share."""
    server = redis_servers()
    (tmp_path / "acme.yaml").write_text(POLICY.replace("concurrent_calls: 10", f"on_store_failure: {mode}"))
    env = {**ENV, "BUDGET_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url}
    client: Client = await start_gateway(
        aiohttp_client, tmp_path, env, clock, sleep=stepping(clock), limiter_url=server.url
    )
    server.stop()
    answer, body = await _place(client)
    assert answer == status, body
    if status == 503:
        assert body["title"] == "Budget unavailable" and twilio.calls() == []
    else:
        assert len(twilio.calls()) == 1
