"""Outbound calls across gateway processes on one Redis: one concurrent_calls limit for all of
them. Ten calls at once, five to each process, with concurrent_calls 5: five reach Twilio (a
stand-in on 127.0.0.1), the rest wait in the queues; two final status callbacks free two slots
and two queued calls go; the others are refused with 429 when their wait runs out. Never more
than five are live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from tests.support.processes import GatewayProcess, stopping
from tests.support.servers import running
from tests.support.twilio import signed_form
from tests.support.twilio_rest import TwilioRestStandIn
from tests.support.waiting import until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "outbound-processes-token-0000000001"
SECRET = "outbound-processes-jwt-secret-of-32-bytes"
ACCOUNT = "AC" + "7" * 32
NUMBER = "+15557770001"
LIMIT = 5
POLICY = f"""\
twilio: {{account_sid: {ACCOUNT}, auth_token_env: OUTBOUND_TOKEN}}
numbers: ["{NUMBER}"]
limits: {{concurrent_calls: {LIMIT}}}
api: {{jwt_secret_env: OUTBOUND_JWT}}
outbound: {{cps: 100, queue_max: 10, queue_timeout_ms: 3000, urls: ["https://runtime.example/call.xml"]}}
"""


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    with stopping() as processes:
        yield processes


def _start(tmp_path: Path, twilio: TwilioRestStandIn, redis_url: str, started: list[GatewayProcess]) -> None:
    """Two gateway processes on one Redis, the shared tenant's REST calls going to `twilio`; both ready."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shared.yaml").write_text(POLICY)
    env = {"OUTBOUND_TOKEN": TOKEN, "OUTBOUND_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url}
    for _ in range(2):
        started.append(GatewayProcess(policies, env, ["--limiter", redis_url]))
    for process in started:
        process.wait_ready()


async def _place(session: aiohttp.ClientSession, base: str) -> int:
    claims = {"tenant": "shared", "aud": "switchyard", "exp": int(time.time()) + 300}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}
    body = {"to": "+15551112222", "from": NUMBER, "url": "https://runtime.example/call.xml"}
    async with session.post(base + "/api/v1/calls", json=body, headers=headers) as response:
        return response.status


async def _end(session: aiohttp.ClientSession, twilio: TwilioRestStandIn, call_sid: str) -> None:
    """Twilio's final status callback for a call, to the StatusCallback URL it was given (the
    instance that placed it, the slot's id in its query), signed for that URL."""
    (url,) = [a.params["StatusCallback"] for a in twilio.arrivals if a.params.get("_sid") == call_sid]
    form = {"AccountSid": ACCOUNT, "CallSid": call_sid, "CallStatus": "completed", "Direction": "outbound-api"}
    head, body = signed_form(TOKEN, url, form)
    async with session.post(url, data=body, headers=head) as response:
        assert response.status == 204


async def test_one_concurrent_calls_limit_across_two_processes(
    tmp_path: Path, redis_url: str, started: list[GatewayProcess]
) -> None:
    """Five of ten reach Twilio; each ended call lets exactly one queued call go; never more
    than five live; the calls left waiting get 429."""
    async with running(TwilioRestStandIn({ACCOUNT: TOKEN}, time.monotonic)) as twilio:
        _start(tmp_path, twilio, redis_url, started)
        a, b = started
        async with aiohttp.ClientSession() as session:
            placing = [asyncio.create_task(_place(session, p.base)) for p in (a, b) * 5]
            await until(lambda: len(twilio.arrivals) >= LIMIT, within=10)
            for sid in (f"CA{n:032x}" for n in (1, 2)):
                twilio.ended += 1  # before its callback: a call placed after it may count it ended
                await _end(session, twilio, sid)
            statuses = sorted(await asyncio.gather(*placing))
    assert statuses == [201] * (LIMIT + 2) + [429] * 3
    assert len(twilio.arrivals) == LIMIT + 2
    assert max(twilio.live) <= LIMIT


async def test_an_idempotency_key_holds_across_processes(
    tmp_path: Path, redis_url: str, started: list[GatewayProcess]
) -> None:
    """A POST retried on another instance with the same Idempotency-Key gets the first answer
    (kept in Redis) and places no second call."""
    async with running(TwilioRestStandIn({ACCOUNT: TOKEN}, time.monotonic)) as twilio:
        _start(tmp_path, twilio, redis_url, started)
        claims = {"tenant": "shared", "aud": "switchyard", "exp": int(time.time()) + 300}
        headers = {
            "Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}",
            "Idempotency-Key": "campaign-7/lead-19",
        }
        body = {"to": "+15551112222", "from": NUMBER, "url": "https://runtime.example/call.xml"}
        answers = []
        async with aiohttp.ClientSession() as session:
            for process in started:
                async with session.post(process.base + "/api/v1/calls", json=body, headers=headers) as response:
                    answers.append(
                        (response.status, await response.json(), response.headers.get("Idempotent-Replayed"))
                    )
    assert [a[0] for a in answers] == [201, 201]
    assert answers[0][1] == answers[1][1] and answers[1][2] == "true"
    assert len(twilio.arrivals) == 1
