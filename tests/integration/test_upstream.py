"""The `upstream` action against a real runtime on 127.0.0.1: forwarded, re-signed (checked by
twilio's RequestValidator on the runtime's side), traced, and the route's fallback for every way
a runtime can fail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from gateway.protocol import twiml
from gateway.telemetry import accesslog
from tests.support.clock import FakeClock
from tests.support.gateway import PUBLIC, post, tenant_gateways
from tests.support.gateway import MakeClient as MakeApp
from tests.support.otlp import OtlpHttpReceiver
from tests.support.servers import running
from tests.support.twilio import ACME_SID, ACME_TOKEN, CALLER, ENV, call_form, signed_form
from tests.support.upstream import TWIML, Runtime

NUMBER = "+15558760001"
FALLBACK = "<Response><Say>Our system is busy.</Say></Response>"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _policy(runtime: Runtime, timeout_ms: int = 2000, failures: int = 5) -> str:
    return f"""
twilio: {{account_sid: {ACME_SID}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{NUMBER}"]
routes:
  - name: runtime
    match: {{kind: voice}}
    upstream:
      url: {runtime.url("/twilio/voice")}
      timeout_ms: {timeout_ms}
      breaker: {{failures: {failures}, cooldown_ms: 60000}}
    fallback: '{FALLBACK}'
  - name: texts
    match: {{kind: sms}}
    upstream: {{url: "{runtime.url("/twilio/sms")}?src=gw"}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    async with running(Runtime(ACME_TOKEN)) as server:
        yield server


@pytest.fixture
def make_app(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, runtime: Runtime) -> MakeApp:
    """make_app(timeout_ms=, failures=, env=, limiter_url=): a gateway on acme's upstream policy."""
    return tenant_gateways(aiohttp_client, clock, tmp_path, partial(_policy, runtime), ENV)


def _call(**extra: str) -> dict[str, str]:
    return call_form(NUMBER, "CA" + "e" * 32, **extra)


async def test_the_webhook_is_forwarded_re_signed_and_its_twiml_answered(make_app: MakeApp, runtime: Runtime) -> None:
    """The runtime gets the body unchanged, a signature valid for its own URL (twilio's
    RequestValidator), the tenant, Twilio's idempotency token and the caller's trace; Twilio
    gets the runtime's TwiML unchanged."""
    client = await make_app()
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    headers = {"I-Twilio-Idempotency-Token": "idem-1", "traceparent": traceparent}
    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN, **headers)
    assert (status, text.encode()) == (200, TWIML)
    (seen,) = runtime.seen
    assert seen.signature_valid
    assert seen.headers["X-Switchyard-Tenant"] == "acme"
    assert seen.headers["I-Twilio-Idempotency-Token"] == "idem-1"
    version, trace_id, parent_id, flags = seen.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01") and parent_id != "00f067aa0ba902b7"
    assert b"From=%2B15557654321" in seen.body  # the body as Twilio sent it


async def test_a_query_in_the_upstream_url_is_signed_too(make_app: MakeApp, runtime: Runtime) -> None:
    """An SMS route whose URL has a query: the runtime validates the signature over URL + query."""
    client = await make_app()
    sms = {"AccountSid": ACME_SID, "MessageSid": "SM" + "f" * 32, "From": CALLER, "To": NUMBER, "Body": "hi"}
    status, _ = await post(client, "/twilio/sms", sms, ACME_TOKEN)
    assert status == 200
    (seen,) = runtime.seen
    assert seen.path == "/twilio/sms" and seen.signature_valid


@pytest.mark.parametrize("mode", ["error", "html", "huge", "close"])
async def test_a_failing_runtime_gets_the_route_fallback(make_app: MakeApp, runtime: Runtime, mode: Any) -> None:
    """500, an HTML error page, a body over the TwiML cap, a connection closed mid-answer: the
    caller hears the route's fallback, never a 5xx."""
    runtime.mode = mode
    client = await make_app()
    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    assert status == 200 and "Our system is busy." in text


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        pytest.param(
            b"<Response><Say>Tom & Jerry</Say></Response>",
            "not well-formed (invalid token): line 1, column 20",
            id="ampersand",
        ),
        pytest.param(b"<Response><Say>Tom and Jerry</Response>", "mismatched tag: line 1, column 30", id="unclosed"),
        pytest.param(
            b"<Response><Say>Tom</Say></Response><Response/>",
            "junk after document element: line 1, column 35",
            id="two-roots",
        ),
        pytest.param(b'<!DOCTYPE r [<!ENTITY t "Tom">]><Response>&t;</Response>', "a DOCTYPE", id="doctype"),
    ],
)
async def test_a_runtime_answering_broken_twiml_gets_the_fallback_and_the_log_says_why(
    make_app: MakeApp, runtime: Runtime, caplog: pytest.LogCaptureFixture, document: bytes, detail: str
) -> None:
    """A 200 whose body is not well-formed TwiML never reaches Twilio: the caller hears the
    route's fallback, and the warning names not_twiml and where the XML broke, not the text."""
    runtime.answer = document
    client = await make_app()
    caplog.set_level(logging.WARNING, logger="switchyard.twilio")
    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    assert status == 200 and "Our system is busy." in text and "Tom" not in text
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "switchyard.twilio"]
    assert f"not_twiml 200: {detail}" in warning and "Tom" not in warning


async def test_a_broken_answer_marks_the_upstream_span_not_twiml(make_app: MakeApp, runtime: Runtime) -> None:
    """The exported trace of a broken answer: the `POST upstream` span failed with error.type
    not_twiml, the server span failed too (the caller got the fallback)."""
    runtime.answer = b"<Response><Say>Tom & Jerry</Say></Response>"
    async with running(OtlpHttpReceiver()) as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "1"}
        client = await make_app(env=env)
        assert (await post(client, "/twilio/voice", _call(), ACME_TOKEN))[0] == 200
        accesslog.flush()
        spans = {span.span.name: span for span in await receiver.wait_for(2)}
    server, upstream = spans["twilio.webhook voice"], spans["POST upstream"]
    assert upstream.attributes["error.type"] == "not_twiml" and upstream.span.status.code == Status.STATUS_CODE_ERROR
    assert (
        server.attributes["switchyard.decision"] == "fallback" and server.span.status.code == Status.STATUS_CODE_ERROR
    )


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"\xef\xbb\xbf" + TWIML + b"\n", id="bom-declaration-newline"),
        pytest.param(
            b'<Response xmlns:x="urn:x"><x:Note/><Gather input="dtmf" action="/g?a=1&amp;b=2">'
            b"<Say>Tom &amp; Jerry</Say></Gather></Response>",
            id="namespaces-attributes-escapes",
        ),
        pytest.param(b"<Response/>", id="self-closing-root"),
    ],
)
async def test_well_formed_twiml_is_answered_unchanged(make_app: MakeApp, runtime: Runtime, document: bytes) -> None:
    """A well-formed <Response> document goes to Twilio byte for byte, as the runtime wrote it."""
    twiml.check(document)  # the same documents pass the check on its own
    runtime.answer = document
    client = await make_app()
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", _call())
    response = await client.post("/twilio/voice", data=body, headers=head)
    assert response.status == 200 and await response.read() == document


async def test_a_slow_runtime_gets_the_fallback_at_its_timeout(make_app: MakeApp, runtime: Runtime) -> None:
    """timeout_ms 200 and a runtime that never answers: the fallback comes after the timeout and
    well before Twilio's 15 s."""
    runtime.mode = "slow"
    client = await make_app(timeout_ms=200)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    elapsed = loop.time() - started
    assert status == 200 and "Our system is busy." in text
    assert 0.2 <= elapsed < 2.0


async def test_a_runtime_that_is_down_gets_the_fallback(make_app: MakeApp, runtime: Runtime) -> None:
    """Nothing listens at the runtime's port: connection refused (tried twice, nothing was sent), fallback."""
    client = await make_app()
    await runtime.stop()
    status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
    assert status == 200 and "Our system is busy." in text


async def test_the_breaker_opens_after_repeated_failures(make_app: MakeApp, runtime: Runtime) -> None:
    """failures: 2: after two 500s the third caller gets the fallback without the runtime being called."""
    runtime.mode = "error"
    client = await make_app(failures=2)
    for _ in range(3):
        status, text = await post(client, "/twilio/voice", _call(), ACME_TOKEN)
        assert status == 200 and "Our system is busy." in text
    assert len(runtime.seen) == 2


async def test_the_upstream_call_is_a_child_span_whose_id_the_runtime_got(make_app: MakeApp, runtime: Runtime) -> None:
    """The exported trace: the server span, and under it a CLIENT span `POST upstream` whose id is
    the parent id in the traceparent the runtime received."""
    async with running(OtlpHttpReceiver()) as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "1"}
        client = await make_app(env=env)
        traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        assert (await post(client, "/twilio/voice", _call(), ACME_TOKEN, traceparent=traceparent))[0] == 200
        accesslog.flush()
        spans = {span.span.name: span.span for span in await receiver.wait_for(2)}
        server, upstream = spans["twilio.webhook voice"], spans["POST upstream"]
        assert server.trace_id.hex() == upstream.trace_id.hex() == TRACE_ID
        assert upstream.parent_span_id == server.span_id
        assert runtime.seen[0].headers["traceparent"].split("-")[2] == upstream.span_id.hex()


async def test_a_retry_waits_for_the_first_answer_and_never_calls_twice(make_app: MakeApp, runtime: Runtime) -> None:
    """The same signed request with the same idempotency token, while the first is still at the
    runtime and after it answered: one call; every copy gets the runtime's TwiML."""
    runtime.mode = "slow"
    client = await make_app()
    retry = {"I-Twilio-Idempotency-Token": "idem-7"}
    first = asyncio.create_task(post(client, "/twilio/voice", _call(), ACME_TOKEN, **retry))
    await runtime.wait_for(1)
    second = asyncio.create_task(post(client, "/twilio/voice", _call(), ACME_TOKEN, **retry))
    runtime.release.set()
    answers = [await first, await second, await post(client, "/twilio/voice", _call(), ACME_TOKEN, **retry)]
    assert [(status, text.encode()) for status, text in answers] == [(200, TWIML)] * 3
    assert len(runtime.seen) == 1


async def test_the_same_token_on_another_request_is_not_a_retry(make_app: MakeApp, runtime: Runtime) -> None:
    """A token replayed with another signed request (another caller) gets its own call."""
    client = await make_app()
    retry = {"I-Twilio-Idempotency-Token": "idem-8"}
    await post(client, "/twilio/voice", _call(), ACME_TOKEN, **retry)
    await post(client, "/twilio/voice", _call(From="+15550001111"), ACME_TOKEN, **retry)
    assert len(runtime.seen) == 2


@pytest.mark.redis
async def test_a_retry_on_another_instance_gets_the_first_answer(
    make_app: MakeApp, runtime: Runtime, redis_url: str
) -> None:
    """Two gateway instances sharing Redis: the retry reaches the second while the first is still
    at the runtime; it waits for that answer and the runtime is called once."""
    runtime.mode = "slow"
    one = await make_app(limiter_url=redis_url)
    two = await make_app(limiter_url=redis_url)
    retry = {"I-Twilio-Idempotency-Token": "idem-9"}
    first = asyncio.create_task(post(one, "/twilio/voice", _call(), ACME_TOKEN, **retry))
    await runtime.wait_for(1)
    second = asyncio.create_task(post(two, "/twilio/voice", _call(), ACME_TOKEN, **retry))
    runtime.release.set()
    assert [(await task)[1].encode() for task in (first, second)] == [TWIML, TWIML]
    assert len(runtime.seen) == 1
