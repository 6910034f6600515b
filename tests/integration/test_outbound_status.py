"""The tenant's own status callback (`outbound.status_callback`): what Twilio reports about calls
and texts the API placed is forwarded there, signed anew for that URL (checked by twilio's
RequestValidator in a runtime on 127.0.0.1); Twilio gets its 204 whatever the runtime does, and
nothing else (inbound calls' statuses, forged callbacks) goes on."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.telemetry import accesslog
from tests.support.clock import FakeClock, stepping
from tests.support.gateway import PUBLIC, post, start_gateway
from tests.support.otlp import OtlpHttpReceiver
from tests.support.redis_server import free_port
from tests.support.servers import running
from tests.support.twilio import ACME_SID, ACME_TOKEN, ENV
from tests.support.twilio_rest import TwilioRestStandIn
from tests.support.upstream import Mode, Runtime

Client = TestClient[web.Request, web.Application]
SECRET = "outbound-test-jwt-secret-of-32-bytes-at-least"
NUMBER = "+15550001111"
POLICY = """\
twilio: {{account_sid: {sid}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{number}"]
limits: {{concurrent_calls: 1}}
api: {{jwt_secret_env: OUTBOUND_JWT}}
outbound:
  cps: 100
  queue_max: 0
  queue_timeout_ms: 2000
  status_callback: "{callback}"
  status_events: [ringing, answered]
routes:
  - name: greeting
    match: {{kind: voice}}
    say: {{text: "Hello from Acme."}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    """The tenant's runtime, where its policy's status_callback points."""
    async with running(Runtime(ACME_TOKEN)) as server:
        yield server


async def _client(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, callback: str, **env: str
) -> Client:
    (tmp_path / "acme.yaml").write_text(POLICY.format(sid=ACME_SID, number=NUMBER, callback=callback))
    variables = {**ENV, "OUTBOUND_JWT": SECRET, "SWITCHYARD_TWILIO_API_BASE": twilio.url, **env}
    return await start_gateway(aiohttp_client, tmp_path, variables, clock, sleep=stepping(clock))


def _auth() -> dict[str, str]:
    claims = {"tenant": "acme", "aud": "switchyard", "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


async def _call(client: Client) -> str:
    body = {"to": "+15557654321", "from": NUMBER, "route": "greeting"}
    response = await client.post("/api/v1/calls", json=body, headers=_auth())
    assert response.status == 201, await response.text()
    return str((await response.json())["sid"])


def _callback(twilio: TwilioRestStandIn, sid: str) -> str:
    """The StatusCallback path Twilio was given for a placed call (what it signs and calls)."""
    (sent,) = [a.params for a in twilio.arrivals if a.params.get("_sid") == sid]
    return sent["StatusCallback"].removeprefix(PUBLIC)


def _status(sid: str, status: str) -> dict[str, str]:
    return {
        "AccountSid": ACME_SID, "CallSid": sid, "CallStatus": status, "Direction": "outbound-api",
        "From": NUMBER, "To": "+15557654321", "CallDuration": "42",
    }  # fmt: skip


async def test_a_placed_calls_statuses_go_on_to_the_tenants_callback_signed_for_it(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """Twilio is asked for the policy's events (and completed); each status comes to the
    gateway, then reaches the runtime's URL with Twilio's body unchanged, a signature valid for
    that URL, the tenant and Twilio's idempotency token; the final one still frees the slot."""
    callback = runtime.url("/calls/status?source=switchyard")  # its own query: signed as written
    client = await _client(aiohttp_client, clock, tmp_path, twilio, callback)
    sid = await _call(client)
    events = [value for name, value in twilio.arrivals[0].pairs if name == "StatusCallbackEvent"]
    assert events == ["ringing", "answered", "completed"]
    path = _callback(twilio, sid)
    for status in ("ringing", "in-progress", "completed"):
        code, _ = await post(client, path, _status(sid, status), ACME_TOKEN, **{"I-Twilio-Idempotency-Token": status})
        assert code == 204
    assert [seen.path for seen in runtime.seen] == ["/calls/status"] * 3
    assert all(seen.query == "source=switchyard" for seen in runtime.seen)
    assert all(seen.signature_valid for seen in runtime.seen)
    last = runtime.seen[-1]
    assert parse_qs(last.body.decode()) == {k: [v] for k, v in _status(sid, "completed").items()}
    assert last.headers["X-Switchyard-Tenant"] == "acme"
    assert last.headers["I-Twilio-Idempotency-Token"] == "completed"
    assert await _call(client)  # the one slot came back with the final status
    metrics = await (await client.get("/metrics")).text()
    assert 'switchyard_status_forwards_total{outcome="delivered",tenant="acme"} 3.0' in metrics


async def test_a_texts_statuses_go_on_when_the_policy_names_a_callback(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """A text sent through the API asks Twilio for its statuses at the gateway's URL, and each
    one (delivered) reaches the tenant's callback, signed for it."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/texts"))
    body = {"to": "+15557654321", "from": NUMBER, "body": "Your table is ready."}
    response = await client.post("/api/v1/messages", json=body, headers=_auth())
    assert response.status == 201
    status_url = twilio.messages[0].params["StatusCallback"]
    assert status_url == f"{PUBLIC}/t/acme/status?via=api"
    form = {"AccountSid": ACME_SID, "MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered", "To": "+15557654321"}
    code, _ = await post(client, status_url.removeprefix(PUBLIC), form, ACME_TOKEN)
    assert code == 204
    (seen,) = runtime.seen
    assert seen.path == "/texts" and seen.signature_valid
    assert parse_qs(seen.body.decode())["MessageStatus"] == ["delivered"]


@pytest.mark.parametrize(("mode", "said"), [("error", "answered 500"), ("close", "not forwarded")])
async def test_a_failing_callback_costs_twilio_nothing(
    aiohttp_client: Any,
    clock: FakeClock,
    tmp_path: Path,
    twilio: TwilioRestStandIn,
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
    said: str,
) -> None:
    """The runtime answering 500 or closing the connection: Twilio still gets 204, the slot is
    still freed, and the failure is logged for the tenant (no phone number in the line)."""
    runtime.mode = mode
    client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/status"))
    sid = await _call(client)
    code, _ = await post(client, _callback(twilio, sid), _status(sid, "completed"), ACME_TOKEN)
    assert code == 204 and len(runtime.seen) >= 1
    (line,) = [r.getMessage() for r in caplog.records if "status callback" in r.getMessage()]
    assert line.startswith("tenant acme: its status callback") and said in line and "+1555" not in line
    assert await _call(client)
    metrics = await (await client.get("/metrics")).text()
    outcome = "refused" if mode == "error" else "failed"
    assert f'switchyard_status_forwards_total{{outcome="{outcome}",tenant="acme"}} 1.0' in metrics


async def test_a_replayed_callback_is_forwarded_once(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """The same signed callback with the same idempotency token, 20 times (Twilio's retries, or a
    replay): one delivery to the tenant; Twilio gets 204 each time; another token goes on."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/status"))
    sid = await _call(client)
    path = _callback(twilio, sid)
    token = {"I-Twilio-Idempotency-Token": "ringing-1"}
    codes = [(await post(client, path, _status(sid, "ringing"), ACME_TOKEN, **token))[0] for _ in range(20)]
    assert codes == [204] * 20 and len(runtime.seen) == 1
    await post(client, path, _status(sid, "in-progress"), ACME_TOKEN, **{"I-Twilio-Idempotency-Token": "answered-1"})
    assert len(runtime.seen) == 2


async def test_a_callback_that_was_not_delivered_goes_on_at_twilios_retry(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """The runtime refused the first delivery (500): Twilio's retry with the same token is
    forwarded again (only a delivered callback counts as its one delivery)."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/status"))
    sid = await _call(client)
    path = _callback(twilio, sid)
    token = {"I-Twilio-Idempotency-Token": "ringing-1"}
    runtime.mode = "error"
    await post(client, path, _status(sid, "ringing"), ACME_TOKEN, **token)
    runtime.mode = "twiml"
    await post(client, path, _status(sid, "ringing"), ACME_TOKEN, **token)
    await post(client, path, _status(sid, "ringing"), ACME_TOKEN, **token)
    assert len(runtime.seen) == 2


async def test_a_runtime_that_is_down_costs_twilio_nothing(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn
) -> None:
    """No runtime listening at the callback URL: the forward was tried and failed (counted),
    204 all the same, and the slot freed."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, f"http://127.0.0.1:{free_port()}/status")
    sid = await _call(client)
    code, _ = await post(client, _callback(twilio, sid), _status(sid, "completed"), ACME_TOKEN)
    assert code == 204
    assert await _call(client)
    metrics = await (await client.get("/metrics")).text()
    assert 'switchyard_status_forwards_total{outcome="failed",tenant="acme"} 1.0' in metrics


async def test_only_what_the_api_placed_goes_on_and_only_when_verified(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """An inbound call's status (the plain status URL) stays with the gateway; a forged callback
    to the API's URL gets 403 and reaches nobody."""
    client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/status"))
    inbound = {**_status("CA" + "2" * 32, "completed"), "Direction": "inbound"}
    code, _ = await post(client, "/t/acme/status", inbound, ACME_TOKEN)
    assert code == 204
    code, _ = await post(client, "/t/acme/status?via=api", _status("CA" + "3" * 32, "completed"), "not-the-token")
    assert code == 403
    assert runtime.seen == []


async def test_the_forward_is_a_child_span_of_the_status_callback(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path, twilio: TwilioRestStandIn, runtime: Runtime
) -> None:
    """One trace: the status callback's server span, the forward its child (with the runtime's
    status), whose id the runtime gets in traceparent; no phone number in either."""
    async with running(OtlpHttpReceiver()) as receiver:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "1"}
        client = await _client(aiohttp_client, clock, tmp_path, twilio, runtime.url("/status"), **otel)
        sid = await _call(client)
        await post(client, _callback(twilio, sid), _status(sid, "completed"), ACME_TOKEN)
        accesslog.flush()
        spans = {span.span.name: span for span in await receiver.wait_for(4)}
    server, step = spans["twilio.webhook status"], spans["status.forward"]
    assert step.span.parent_span_id == server.span.span_id
    assert step.attributes["http.response.status_code"] == 200
    (seen,) = runtime.seen
    assert seen.headers["traceparent"].split("-")[2] == step.span.span_id.hex()
    for span in (server, step):
        assert not any("+1555" in str(value) for value in span.attributes.values())
