"""A call-out's answer that sends texts asks the day first: the runtime's <Message> reply is charged
against the budget before it reaches Twilio, and a day that cannot hold its segments answers the
budget refusal instead (before, the segments were booked afterwards, past the cap)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import SERVICES
from gateway.limits.budget import utc_day
from tests.support.clock import FakeClock
from tests.support.gateway import MakeClient, post, tenant_gateways
from tests.support.servers import running
from tests.support.twilio import ACME_SID, ACME_TOKEN, ENV, sms_params, voice_params
from tests.support.upstream import Runtime

NUMBER = "+15558760002"
REPLY = b'<?xml version="1.0" encoding="UTF-8"?><Response><Message>Your parcel is on its way.</Message></Response>'


def _policy(runtime: Runtime, daily_usd: float) -> str:
    # A webhook $0.001, a segment $0.01: a text in and one out cost $0.021.
    return f"""
twilio: {{account_sid: {ACME_SID}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{NUMBER}"]
prices: {{webhook: 0.001, sms_segment: 0.01}}
budget: {{daily_usd: {daily_usd}}}
routes:
  - name: texts
    match: {{kind: sms}}
    upstream: {{url: "{runtime.url("/twilio/sms")}"}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    async with running(Runtime(ACME_TOKEN)) as server:
        server.answer = REPLY
        yield server


@pytest.fixture
def make_app(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, runtime: Runtime) -> MakeClient:
    def policy(daily_usd: float = 1.0) -> str:
        return _policy(runtime, daily_usd)

    return tenant_gateways(aiohttp_client, clock, tmp_path, policy, ENV)


def _text() -> dict[str, str]:
    return sms_params(to=NUMBER, AccountSid=ACME_SID, NumSegments="1")


async def test_an_answer_with_a_text_is_charged_once_before_it_goes(make_app: MakeClient) -> None:
    """Room for it: the runtime's <Message> is relayed, and the day has the webhook, the text in
    and the text out, each once (the record at the end does not book the reply again)."""
    gateway = await make_app()
    status, text = await post(gateway, "/twilio/sms", _text(), ACME_TOKEN)
    assert status == 200 and "parcel is on its way" in text
    services = gateway.app[SERVICES]
    await gateway.get("/healthz")  # the record at the end has run
    spend = await services.ledger.spend("acme", utc_day(services.wall()))
    assert spend.parts == {"webhook": 1_000, "sms": 20_000}


async def test_a_day_that_cannot_hold_the_reply_answers_the_refusal(make_app: MakeClient) -> None:
    """$0.015 left after the webhook and the text in ($0.011): the reply's segment ($0.01) does
    not fit, so Twilio gets the budget refusal (no reply sent) and the segment is not booked."""
    gateway = await make_app(daily_usd=0.015)
    status, text = await post(gateway, "/twilio/sms", _text(), ACME_TOKEN)
    assert status == 200 and "<Message>" not in text
    services = gateway.app[SERVICES]
    await gateway.get("/healthz")
    spend = await services.ledger.spend("acme", utc_day(services.wall()))
    assert spend.parts == {"webhook": 1_000, "sms": 10_000}


async def test_a_retry_of_a_refused_answer_hears_the_refusal(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, runtime: Runtime
) -> None:
    """Twilio retries the refused webhook (same idempotency token): it hears the refusal the
    first one got, kept for it, not the runtime's text (which would go out past the cap)."""
    # With a bucket, the retry is known as one and not charged again (the budget alone would
    # charge it anew and refuse it before it reached the kept answer).
    text = _policy(runtime, 0.015).replace("routes:", "limits: {sms: {rate: 100, per: minute}}\nroutes:")
    gateway = await tenant_gateways(aiohttp_client, clock, tmp_path, lambda: text, ENV)()
    token = {"I-Twilio-Idempotency-Token": "retry-of-a-refused-answer"}
    first = await post(gateway, "/twilio/sms", _text(), ACME_TOKEN, **token)
    again = await post(gateway, "/twilio/sms", _text(), ACME_TOKEN, **token)
    assert first[0] == again[0] == 200
    assert "<Message>" not in first[1] and again[1] == first[1]
    assert len(runtime.seen) == 1


async def test_a_call_refused_for_its_answers_texts_gives_its_hold_back(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, runtime: Runtime
) -> None:
    """A voice webhook holds the call's estimate with its charge; its answer's <Message> then
    does not fit and the call is refused: the estimate is released at once, not held for 4 h."""

    # A call holds 5 minutes ($0.05) with its webhook ($0.001); a segment costs $0.05: no room.
    text = (
        _policy(runtime, 0.06)
        .replace("kind: sms", "kind: voice")
        .replace("/twilio/sms", "/twilio/voice")
        .replace("sms_segment: 0.01}", "sms_segment: 0.05, voice_minute: 0.01}")
        .replace("budget: {daily_usd: 0.06}", "budget: {daily_usd: 0.06, call_reserve_minutes: 5}")
    )
    gateway = await tenant_gateways(aiohttp_client, clock, tmp_path, lambda: text, ENV)()
    status, answer = await post(gateway, "/twilio/voice", voice_params(to=NUMBER, AccountSid=ACME_SID), ACME_TOKEN)
    assert status == 200 and "<Message>" not in answer
    services = gateway.app[SERVICES]
    spend = await services.ledger.spend("acme", utc_day(services.wall()))
    assert (dict(spend.parts), spend.reserved) == ({"webhook": 1_000}, 0)
