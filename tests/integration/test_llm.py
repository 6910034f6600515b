"""The `llm` action against an OpenAI-compatible server on 127.0.0.1: an SMS answered with the
model's reply, a spoken conversation in Gather turns, the route's fallback for every way the model
can fail, its own bucket, the budget held and settled, and the `chat {model}` span."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.keys import SERVICES
from gateway.limits.budget import Spend, utc_day
from gateway.telemetry import accesslog
from tests.support.clock import FakeClock
from tests.support.gateway import PUBLIC, Client, post, tenant_gateways
from tests.support.gateway import MakeClient as MakeApp
from tests.support.openai import COMPLETION_TOKENS, PROMPT_TOKENS, REPLY, RETRY_AFTER, ChatServer
from tests.support.otlp import OtlpHttpReceiver
from tests.support.servers import running
from tests.support.twilio import ACME_SID, ACME_TOKEN, CALLER, ENV, call_form

NUMBER = "+15558760002"
KEY = "sk-test-llm-key-0123456789"
SYSTEM = "You are the front desk of Acme Clinic. Answer in one sentence."
QUESTION = "When are you open?"
PROMPT = "Acme Clinic, what can I do for you?"
CLOSING = "Thank you for calling Acme. Goodbye."
VOICE_FALLBACK = "Our assistant is unavailable."
SMS_FALLBACK = "Please call us instead."
WALL = 1_700_000_000.0
# 10 and 30 USD per million tokens: 10 and 30 µ$ per token.
REAL_COST = PROMPT_TOKENS * 10 + COMPLETION_TOKENS * 30


def _policy(server: ChatServer, *, timeout_ms: int = 2000, limits: str = "{}", budget: str = "") -> str:
    action = (
        f"{{model: gpt-4o-mini, system: '{SYSTEM}', max_tokens: 80, timeout_ms: {timeout_ms},"
        f" api_key_env: ACME_OPENAI_KEY, base_url: '{server.base_url}', max_turns: 2,"
        f" prompt: '{PROMPT}', closing: '{CLOSING}'}}"
    )
    return f"""
twilio: {{account_sid: {ACME_SID}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{NUMBER}"]
limits: {limits}
prices: {{models: {{gpt-4o-mini: {{input_per_1m: 10.0, output_per_1m: 30.0}}}}}}
{budget}
routes:
  - name: assistant
    match: {{kind: voice}}
    llm: {action}
    fallback: '<Response><Say>{VOICE_FALLBACK}</Say></Response>'
  - name: texts
    match: {{kind: sms}}
    llm: {action}
    fallback: '<Response><Message>{SMS_FALLBACK}</Message></Response>'
"""


@pytest.fixture
async def model() -> AsyncIterator[ChatServer]:
    async with running(ChatServer()) as server:
        yield server


@pytest.fixture
def make_app(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, model: ChatServer) -> MakeApp:
    """make_app(timeout_ms=, limits=, budget=, env=): a gateway on acme's llm policy, its day WALL's."""
    environment = {**ENV, "ACME_OPENAI_KEY": KEY}
    return tenant_gateways(aiohttp_client, clock, tmp_path, partial(_policy, model), environment, wall=lambda: WALL)


def _sms(body: str = QUESTION) -> dict[str, str]:
    return {"AccountSid": ACME_SID, "MessageSid": "SM" + "c" * 32, "From": CALLER, "To": NUMBER, "Body": body}


def _call(**extra: str) -> dict[str, str]:
    return call_form(NUMBER, "CA" + "d" * 32, **extra)


def _verbs(text: str) -> list[tuple[str, str | None, dict[str, str]]]:
    """The answer's verbs as (tag, text, attributes), a Gather's children after it."""
    out = []
    for verb in ET.fromstring(text):
        out.append((verb.tag, verb.text, dict(verb.attrib)))
        out.extend((f"{verb.tag}/{child.tag}", child.text, dict(child.attrib)) for child in verb)
    return out


def _gather(action: str) -> tuple[str, None, dict[str, str]]:
    attributes = {"input": "speech", "action": action, "method": "POST", "speechTimeout": "auto"}
    return ("Gather", None, attributes)


async def _spend(client: Client) -> Spend:
    """The day's spend once every ended request is booked (the batch handed over, its writes done)."""
    accesslog.flush()
    services = client.app[SERVICES]
    await services.recorder.settled()
    return await services.ledger.spend("acme", utc_day(WALL))


async def test_an_sms_is_answered_with_the_models_reply(make_app: MakeApp, model: ChatServer) -> None:
    """The text goes to the model after the route's system prompt, with the route's model,
    max_tokens and the key from the environment; its reply comes back as <Message>."""
    client = await make_app()
    status, text = await post(
        client, "/twilio/sms", _sms(), ACME_TOKEN, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    )
    assert status == 200
    assert _verbs(text) == [("Message", REPLY, {})]
    (chat,) = model.seen
    assert chat.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 80,
    }
    assert chat.headers["Authorization"] == f"Bearer {KEY}"
    assert chat.headers["Content-Type"] == "application/json"
    assert "traceparent" not in chat.headers  # a third party: our trace stays ours


async def test_a_call_is_a_conversation_of_gather_turns(make_app: MakeApp, model: ChatServer) -> None:
    """First the prompt in a Gather posting turn 2 to the tenant's own webhook; each answer is a
    <Say> and the next Gather; the last (max_turns 2) ends with the closing line; past it, the
    closing line alone, without asking the model."""
    client = await make_app()
    own = f"{PUBLIC}/t/acme/voice"

    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    assert status == 200
    assert _verbs(text) == [
        _gather(f"{own}?turn=2"),
        ("Gather/Say", PROMPT, {}),
        ("Say", CLOSING, {}),
        ("Hangup", None, {}),
    ]
    assert model.seen == []

    status, text = await post(client, "/t/acme/voice?turn=2", _call(SpeechResult=QUESTION), ACME_TOKEN)
    assert status == 200
    assert _verbs(text) == [("Say", REPLY, {}), _gather(f"{own}?turn=3"), ("Say", CLOSING, {}), ("Hangup", None, {})]
    assert model.seen[-1].json["messages"][1] == {"role": "user", "content": QUESTION}

    status, text = await post(client, "/t/acme/voice?turn=3", _call(SpeechResult="And on Sunday?"), ACME_TOKEN)
    assert _verbs(text) == [("Say", REPLY, {}), ("Say", CLOSING, {}), ("Hangup", None, {})]
    assert model.seen[-1].json["messages"][1] == {"role": "user", "content": "And on Sunday?"}

    status, text = await post(client, "/t/acme/voice?turn=4", _call(SpeechResult="Hello?"), ACME_TOKEN)
    assert _verbs(text) == [("Say", CLOSING, {}), ("Hangup", None, {})]
    assert len(model.seen) == 2


async def test_a_reply_with_markup_is_escaped(make_app: MakeApp, model: ChatServer) -> None:
    """The model's `<`, `&` and control characters reach Twilio as text in well-formed XML."""
    model.reply = 'Use <b>bold</b> & "quotes"\x00.'
    client = await make_app()
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", 'Use <b>bold</b> & "quotes".', {})]


@pytest.mark.parametrize("mode", ["unauthorized", "rate_limited", "error", "garbage", "empty", "slow"])
async def test_a_failing_model_gets_the_route_fallback(
    make_app: MakeApp, model: ChatServer, mode: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """401, 429, 500, not JSON, an empty reply, no answer within timeout_ms: the route's
    fallback, on SMS and voice; the log says why without the key, the prompt or the words."""
    model.mode = mode
    client = await make_app(timeout_ms=200)
    with caplog.at_level(logging.INFO):
        _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
        assert _verbs(text) == [("Message", SMS_FALLBACK, {})]
        _, text = await post(client, "/t/acme/voice?turn=2", _call(SpeechResult=QUESTION), ACME_TOKEN)
        assert _verbs(text) == [("Say", VOICE_FALLBACK, {})]
    assert len(model.seen) == 2
    logged = caplog.text
    assert "action llm failed" in logged
    assert KEY not in logged and SYSTEM not in logged and QUESTION not in logged
    if mode == "rate_limited":
        assert f"retry-after {RETRY_AFTER}" in logged


async def test_the_llm_bucket_refuses_with_the_fallback(make_app: MakeApp, model: ChatServer) -> None:
    """limits.llm of one call an hour: the second text gets the fallback without a call."""
    client = await make_app(limits="{llm: {rate: 1, per: hour, burst: 1}}")
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", REPLY, {})]
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", SMS_FALLBACK, {})]
    assert len(model.seen) == 1


async def test_a_prompt_turn_charges_no_bucket(make_app: MakeApp, model: ChatServer) -> None:
    """The prompt asks nothing of the model: the llm bucket is left for the answers."""
    client = await make_app(limits="{llm: {rate: 1, per: hour, burst: 1}}")
    await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    _, text = await post(client, "/t/acme/voice?turn=2", _call(SpeechResult=QUESTION), ACME_TOKEN)
    assert _verbs(text)[0] == ("Say", REPLY, {})


async def test_the_real_cost_is_committed_against_the_budget(make_app: MakeApp) -> None:
    """With a budget: the estimate is held during the call, then the cost from `usage` booked."""
    client = await make_app(budget="budget: {daily_usd: 0.01}")
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", REPLY, {})]
    spend = await _spend(client)
    assert (dict(spend.parts), spend.reserved) == ({"llm": REAL_COST}, 0)


async def test_a_failed_call_releases_its_hold(make_app: MakeApp, model: ChatServer) -> None:
    """A 500: nothing booked, nothing left held."""
    model.mode = "error"
    client = await make_app(budget="budget: {daily_usd: 0.01}")
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", SMS_FALLBACK, {})]
    spend = await _spend(client)
    assert (dict(spend.parts), spend.reserved) == ({}, 0)


async def test_a_call_whose_estimate_does_not_fit_is_not_made(make_app: MakeApp, model: ChatServer) -> None:
    """daily_usd 0.001 (1000 µ$) and max_tokens 80 at 30 µ$ (2400 µ$): fallback, no call."""
    client = await make_app(budget="budget: {daily_usd: 0.001}")
    _, text = await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    assert _verbs(text) == [("Message", SMS_FALLBACK, {})]
    assert model.seen == []
    assert (await _spend(client)).reserved == 0


async def test_without_a_budget_the_cost_is_still_booked(make_app: MakeApp) -> None:
    """No budget: nothing is held, and the real cost is in the day's spend all the same."""
    client = await make_app()
    await post(client, "/twilio/sms", _sms(), ACME_TOKEN)
    spend = await _spend(client)
    assert (dict(spend.parts), spend.reserved) == ({"llm": REAL_COST}, 0)


async def _spans(make_app: MakeApp, receiver: OtlpHttpReceiver) -> tuple[Span, Span, list[bytes]]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "1"}
    client = await make_app(env=env)
    assert (await post(client, "/twilio/sms", _sms(), ACME_TOKEN))[0] == 200
    accesslog.flush()
    received = await receiver.wait_for(2)
    spans = {r.span.name: r.span for r in received}
    return spans["twilio.webhook sms"], spans["chat gpt-4o-mini"], [r.span.SerializeToString() for r in received]


async def test_the_model_call_is_a_genai_child_span(make_app: MakeApp, model: ChatServer) -> None:
    """`chat gpt-4o-mini`, CLIENT, under the server span, with the GenAI request and response
    attributes and its cost; no prompt, words or answer in any span."""
    async with running(OtlpHttpReceiver()) as receiver:
        server, chat, encoded = await _spans(make_app, receiver)
    assert chat.kind == Span.SPAN_KIND_CLIENT and chat.parent_span_id == server.span_id
    assert chat.trace_id == server.trace_id
    attributes = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in chat.attributes}
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 80,
        "server.address": "127.0.0.1",
        "server.port": model.port,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.finish_reasons": "stop",
        "gen_ai.usage.input_tokens": PROMPT_TOKENS,
        "gen_ai.usage.output_tokens": COMPLETION_TOKENS,
        "switchyard.cost.usd": pytest.approx(REAL_COST / 1_000_000),
    }
    assert chat.status.code == Status.STATUS_CODE_UNSET
    for span in encoded:
        for text in (SYSTEM, QUESTION, REPLY, KEY):
            assert text.encode() not in span


async def test_a_failed_model_call_span_carries_its_error_type(make_app: MakeApp, model: ChatServer) -> None:
    """A 429: the chat span is failed, error.type rate_limited."""
    model.mode = "rate_limited"
    async with running(OtlpHttpReceiver()) as receiver:
        _, chat, _ = await _spans(make_app, receiver)
    attributes = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in chat.attributes}
    assert attributes["error.type"] == "rate_limited"
    assert "gen_ai.usage.input_tokens" not in attributes
    assert chat.status.code == Status.STATUS_CODE_ERROR
