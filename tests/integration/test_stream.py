"""The Media Streams bridge end to end, with real sockets on 127.0.0.1: a Twilio-like client
(signatures from twilio's RequestValidator) answers a webhook, opens the stream the TwiML names,
and plays a recorded-shape session through the gateway into a runtime stand-in and back."""

from __future__ import annotations

import asyncio
import base64
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from twilio.request_validator import RequestValidator

from gateway.actions.stream import CLAIM_TTL
from gateway.bridge import lifecycle
from gateway.bridge import relay as relay_module
from gateway.bridge.relay import CHECK_EVERY, STALL_AFTER, Relay
from gateway.keys import SERVICES
from gateway.limits.budget import utc_day
from gateway.protocol import media
from gateway.telemetry import accesslog
from tests.support.clock import FakeClock
from tests.support.gateway import Client, post, tenant_gateways
from tests.support.gateway import MakeClient as MakeApp
from tests.support.media_runtime import MediaRuntime, Mode
from tests.support.otlp import OtlpHttpReceiver
from tests.support.servers import running
from tests.support.twilio import ACME_SID, ACME_TOKEN, ENV, call_form
from tests.support.twilio import call_sid as _call_sid
from tests.support.waiting import first, until

NUMBER = "+15558760001"
FALLBACK = "<Response><Say>Goodbye from the fallback.</Say></Response>"
STREAM_SID = "MZ" + "5" * 32
PAYLOAD = base64.b64encode(bytes(range(160))).decode()  # 20 ms of μ-law


def _policy(runtime: MediaRuntime, concurrent: int | None = 2, max_duration_s: int = 600) -> str:
    limits = "" if concurrent is None else f"limits: {{concurrent_streams: {concurrent}}}"
    return f"""
twilio: {{account_sid: {ACME_SID}, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["{NUMBER}"]
{limits}
prices: {{stream_minute: 0.004}}
budget: {{daily_usd: 10}}
routes:
  - name: agent
    match: {{kind: voice}}
    stream: {{upstream: "{runtime.url("/agent")}", parameters: {{agent: triage}}, max_duration_s: {max_duration_s}}}
    fallback: '{FALLBACK}'
"""


@pytest.fixture
async def runtime() -> AsyncIterator[MediaRuntime]:
    async with running(MediaRuntime(ACME_TOKEN)) as server:
        yield server


@pytest.fixture
def make_app(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, runtime: MediaRuntime) -> MakeApp:
    """make_app(concurrent=, max_duration_s=, env=): a gateway on acme's stream policy."""
    return tenant_gateways(aiohttp_client, clock, tmp_path, partial(_policy, runtime), ENV)


async def answer(client: Client, call_sid: str) -> tuple[str, dict[str, str], ET.Element]:
    """The webhook's answer: the stream path, its <Parameter>s, and the whole TwiML."""
    status, text = await post(client, "/twilio/voice", call_form(NUMBER, call_sid), ACME_TOKEN)
    assert status == 200
    root = ET.fromstring(text)
    stream = root.find("Connect/Stream")
    assert stream is not None, text
    url = stream.get("url", "")
    assert url.startswith("ws://gw.test/")
    return url.removeprefix("ws://gw.test"), {p.get("name", ""): p.get("value", "") for p in stream}, root


async def connect(
    client: Client, path: str, token: str = ACME_TOKEN, *, autoclose: bool = True
) -> aiohttp.ClientWebSocketResponse:
    """Twilio's upgrade: X-Twilio-Signature over the ws(s):// URL, no parameters. autoclose
    False: a close frame is read and not yet answered (Twilio's answer is a network away)."""
    signature = RequestValidator(token).compute_signature(f"ws://gw.test{path}", {})
    return await client.ws_connect(path, headers={"X-Twilio-Signature": signature}, autoclose=autoclose)


def start(call_sid: str, parameters: dict[str, str]) -> str:
    return media.start_message(STREAM_SID, call_sid, ACME_SID, parameters)


async def receive_until_closed(ws: aiohttp.ClientWebSocketResponse, into: list[str]) -> None:
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            into.append(message.data)


async def test_a_recorded_session_is_relayed_both_ways_in_order(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """connected, start, 500 media frames, dtmf, mark echoes and stop reach the runtime in order
    and unchanged (start with the tenant added and the admission token removed; the upgrade
    signed anew for the runtime's URL); the runtime's media and marks reach Twilio unchanged;
    then both sides close, the slot is free and one stream minute is booked."""
    client = await make_app()
    call_sid = _call_sid(1)
    path, parameters, _ = await answer(client, call_sid)
    assert path == "/t/acme/stream" and parameters["agent"] == "triage"
    twilio = await connect(client, path)
    got: list[str] = []
    sent = [media.connected_message(), start(call_sid, parameters)]
    frames = [media.twilio_media_message(STREAM_SID, i + 3, i + 1, 20 * i, PAYLOAD) for i in range(500)]
    for text in sent:
        await twilio.send_str(text)
    for frame in frames:
        await twilio.send_str(frame)
    await twilio.send_str(media.dtmf_message(STREAM_SID, 503, "7"))
    # The runtime echoes each frame and sends a mark after each 100: Twilio echoes those back.
    echoes: list[str] = []
    while len([g for g in got if '"mark"' in g]) < 5:
        message = await asyncio.wait_for(twilio.receive(), 5)
        assert message.type is WSMsgType.TEXT
        got.append(message.data)
    for i, name in enumerate(orjson.loads(g)["mark"]["name"] for g in got if '"mark"' in g):
        echo = media.twilio_mark_message(STREAM_SID, 504 + i, name)
        echoes.append(echo)
        await twilio.send_str(echo)
    stop = media.stop_message(STREAM_SID, 509, call_sid, ACME_SID)
    await twilio.send_str(stop)
    await asyncio.wait_for(receive_until_closed(twilio, got), 5)
    assert twilio.close_code == 1000

    (connection,) = runtime.connections
    await asyncio.wait_for(connection.closed.wait(), 5)
    assert connection.signature_valid
    assert connection.headers["X-Switchyard-Tenant"] == "acme"
    assert connection.headers["traceparent"].startswith("00-")
    received = connection.received
    assert received[0] == sent[0]
    forwarded_start = orjson.loads(received[1])["start"]
    assert forwarded_start["customParameters"] == {"agent": "triage", "tenant": "acme"}
    assert forwarded_start["callSid"] == call_sid
    assert received[2:502] == frames
    assert orjson.loads(received[502])["event"] == "dtmf"
    assert received[503:508] == echoes and received[508] == stop
    outbound = [g for g in got if '"media"' in g]
    assert outbound == [media.media_message(STREAM_SID, PAYLOAD)] * 500

    services = client.app[SERVICES]
    await asyncio.wait_for(services.streams.drained(), 5)
    assert await services.leases.count("acme", "streams") == 0
    spend = await services.ledger.spend("acme", utc_day(services.wall()))
    assert spend.parts.get("stream") == 4000  # 10 s of audio: one started minute at $0.004
    assert spend.reserved == 0


async def test_an_upgrade_without_a_valid_signature_is_refused_before_upgrading(
    make_app: MakeApp, runtime: MediaRuntime
) -> None:
    """No signature, one made with another token, or for another URL: 403, no WebSocket."""
    client = await make_app()
    path, _, _ = await answer(client, _call_sid(2))
    other_url = RequestValidator(ACME_TOKEN).compute_signature("ws://gw.test/t/other/stream", {})
    for headers in ({}, {"X-Twilio-Signature": "forged"}, {"X-Twilio-Signature": other_url}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(path, headers=headers)
        assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await connect(client, path, token="another-token")
    assert runtime.connections == []


async def test_a_start_this_gateway_did_not_admit_is_closed(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """A signed upgrade whose start carries no admission token, another call's, or a forged one
    is closed with 1008 and never reaches the runtime."""
    client = await make_app()
    _, parameters, _ = await answer(client, _call_sid(3))
    for params, call_sid in (
        ({"agent": "triage"}, _call_sid(3)),
        (parameters, _call_sid(4)),
        ({**parameters, "switchyard_admission": parameters["switchyard_admission"][:-2] + "xx"}, _call_sid(3)),
    ):
        twilio = await connect(client, "/t/acme/stream")
        await twilio.send_str(media.connected_message())
        await twilio.send_str(start(call_sid, params))
        message = await asyncio.wait_for(twilio.receive(), 5)
        assert message.type is WSMsgType.CLOSE and twilio.close_code == 1008
    assert runtime.connections == []


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda t: t[:-1] + "é", id="in the mac"),
        pytest.param(lambda t: "v2.é.ü.ö.ä.ß", id="everywhere"),
        pytest.param(lambda t: "☎" * 300, id="long"),
    ],
)
async def test_a_non_ascii_admission_token_is_refused_quietly_with_1008(
    make_app: MakeApp, runtime: MediaRuntime, caplog: pytest.LogCaptureFixture, token: Any
) -> None:
    """A start whose admission token holds a non-ASCII character is closed with 1008 and one
    short warning: no traceback, no 1011, nothing of the token logged."""
    client = await make_app()
    _, parameters, _ = await answer(client, _call_sid(17))
    bad = token(parameters["switchyard_admission"])
    twilio = await connect(client, "/t/acme/stream")
    with caplog.at_level(logging.INFO):
        await twilio.send_str(start(_call_sid(17), {**parameters, "switchyard_admission": bad}))
        message = await asyncio.wait_for(twilio.receive(), 5)
        assert message.type is WSMsgType.CLOSE and twilio.close_code == 1008
        await asyncio.wait_for(client.app[SERVICES].streams.drained(), 5)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert all(r.exc_info is None for r in caplog.records)
    assert len(warnings[0].getMessage()) < 120 and bad[-8:] not in caplog.text
    assert runtime.connections == []


async def test_over_concurrent_streams_the_webhook_gets_the_refusal(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """concurrent_streams 2: the third call is refused at the webhook (the tenant's refusal,
    not a stream that would be cut); when a stream ends its slot serves the next call."""
    client = await make_app(concurrent=2)
    first, parameters, _ = await answer(client, _call_sid(5))
    await answer(client, _call_sid(6))
    status, text = await post(client, "/twilio/voice", call_form(NUMBER, _call_sid(7)), ACME_TOKEN)
    assert status == 200 and ET.fromstring(text).find("Reject") is not None
    twilio = await connect(client, first)
    await twilio.send_str(start(_call_sid(5), parameters))
    await asyncio.wait_for(runtime.connected.wait(), 5)
    await twilio.send_str(media.stop_message(STREAM_SID, 2, _call_sid(5), ACME_SID))
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    _, _, root = await answer(client, _call_sid(8))
    assert root.find("Connect/Stream") is not None


@pytest.mark.parametrize("side", ["runtime", "twilio"])
async def test_either_side_closing_closes_the_other_and_frees_the_slot(
    make_app: MakeApp, runtime: MediaRuntime, side: str
) -> None:
    """The runtime hanging up closes Twilio's socket (Twilio then plays the fallback), Twilio
    hanging up closes the runtime's; the slot comes back either way."""
    if side == "runtime":
        runtime.mode = "close"
    client = await make_app(concurrent=1)
    path, parameters, root = await answer(client, _call_sid(9))
    assert [child.tag for child in root] == ["Connect", "Say"]  # the fallback after </Connect>
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(9), parameters))
    await asyncio.wait_for(runtime.connected.wait(), 5)
    if side == "twilio":
        await twilio.close()
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    (connection,) = runtime.connections
    await asyncio.wait_for(connection.closed.wait(), 5)
    services = client.app[SERVICES]
    await asyncio.wait_for(services.streams.drained(), 5)
    assert await services.leases.count("acme", "streams") == 0


@pytest.mark.parametrize("end", ["twilio stops", "twilio hangs up", "runtime hangs up", "runtime unreachable"])
async def test_the_slot_is_free_once_twilio_sees_the_close(make_app: MakeApp, runtime: MediaRuntime, end: str) -> None:
    """concurrent_streams 1: the moment Twilio has the stream's close frame (before it answers
    it), whichever side ended the stream, the next call's webhook is admitted."""
    modes: dict[str, Mode] = {"runtime hangs up": "close", "runtime unreachable": "refuse"}
    runtime.mode = modes.get(end, "echo")
    client = await make_app(concurrent=1)
    call_sid = _call_sid(40)
    path, parameters, _ = await answer(client, call_sid)
    twilio = await connect(client, path, autoclose=False)
    await twilio.send_str(start(call_sid, parameters))
    if end.startswith("twilio"):
        await _relaying(client)
    if end == "twilio hangs up":
        await twilio.close()  # returns once the gateway's answering close frame has come
    else:
        if end == "twilio stops":
            await twilio.send_str(media.stop_message(STREAM_SID, 2, call_sid, ACME_SID))
        message = await asyncio.wait_for(twilio.receive(), 5)
        assert message.type is WSMsgType.CLOSE  # read, not answered: the gateway still waits for ours
    status, text = await post(client, "/twilio/voice", call_form(NUMBER, _call_sid(41)), ACME_TOKEN)
    assert status == 200 and ET.fromstring(text).find("Connect/Stream") is not None, text
    await twilio.close()


async def test_an_unreachable_runtime_closes_twilio_with_1011(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """A runtime refusing the upgrade: Twilio's socket is closed with 1011 (it plays the
    fallback), and the slot is given back."""
    runtime.mode = "refuse"
    client = await make_app(concurrent=1)
    path, parameters, _ = await answer(client, _call_sid(10))
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(10), parameters))
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    assert twilio.close_code == 1011
    _, _, root = await answer(client, _call_sid(11))
    assert root.find("Connect/Stream") is not None


async def test_a_stream_past_its_max_duration_is_closed(
    make_app: MakeApp, runtime: MediaRuntime, clock: FakeClock
) -> None:
    """max_duration_s on the injected clock: once passed, both sides are closed (1000)."""
    client = await make_app(max_duration_s=60)
    path, parameters, _ = await answer(client, _call_sid(12))
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(12), parameters))
    await asyncio.wait_for(runtime.connected.wait(), 5)
    clock.advance(61)
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    assert twilio.close_code == 1000
    (connection,) = runtime.connections
    await asyncio.wait_for(connection.closed.wait(), 5)


async def test_a_runtime_that_stops_reading_does_not_grow_the_gateway(
    make_app: MakeApp, runtime: MediaRuntime, clock: FakeClock
) -> None:
    """A runtime that never reads: the gateway stops reading Twilio (its buffers stay bounded
    while Twilio's side backs up), and after stall_after on the clock it closes both with 1011."""
    runtime.mode = "silent"
    client = await make_app()
    path, parameters, _ = await answer(client, _call_sid(13))
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(13), parameters))
    await asyncio.wait_for(runtime.connected.wait(), 5)
    big = base64.b64encode(bytes(30_000)).decode()  # 40 KB frames: the socket buffers fill fast
    frame = media.twilio_media_message(STREAM_SID, 3, 1, 0, big)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            await twilio.send_str(frame)
            sent += 1

    flooding = asyncio.create_task(flood())
    relay = await _relaying(client)
    runtime_side = relay._runtime

    closing = asyncio.create_task(receive_until_closed(twilio, []))
    largest = 0
    async with asyncio.timeout(60):
        # The kernel's socket buffers grow for a while (each send that drains resets the relay's
        # stall watch): each time the relay is held back, the clock jumps past stall_after, and
        # once the buffers are full and it stays held back, the next check ends the stream.
        while not closing.done():
            if relay.held_back("inbound"):
                largest = max(largest, runtime_side.buffered())
                clock.advance(STALL_AFTER + 1)
            await asyncio.wait({closing}, timeout=CHECK_EVERY * 1.5)
    assert largest < 1_000_000  # what the gateway itself holds for the runtime stays bounded
    flooding.cancel()
    assert twilio.close_code == 1011
    assert sent < 1000  # Twilio's side was held back by its socket: bounded by kernel buffers


async def test_no_start_in_time_closes_the_socket(
    make_app: MakeApp, runtime: MediaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signed upgrade that never sends `start` is closed (1008) after the start deadline."""
    monkeypatch.setattr(lifecycle, "START_WITHIN", 0.2)
    client = await make_app()
    twilio = await connect(client, "/t/acme/stream")
    await twilio.send_str(media.connected_message())
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    assert twilio.close_code == 1008
    assert runtime.connections == []


async def test_a_stream_is_one_span_with_its_meter_and_cost(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """The exported `twilio.stream` span carries the call, the meter (frames, bytes) and the
    stream's cost; its CLIENT child `stream.connect` is the parent the runtime was given."""
    async with running(OtlpHttpReceiver()) as receiver:
        client = await make_app(env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "1"})
        call_sid = _call_sid(14)
        path, parameters, _ = await answer(client, call_sid)
        twilio = await connect(client, path)
        await twilio.send_str(start(call_sid, parameters))
        for i in range(50):
            await twilio.send_str(media.twilio_media_message(STREAM_SID, i + 2, i + 1, 20 * i, PAYLOAD))
        await twilio.send_str(media.stop_message(STREAM_SID, 52, call_sid, ACME_SID))
        await asyncio.wait_for(receive_until_closed(twilio, []), 5)
        accesslog.flush()
        spans = {span.span.name: span for span in await receiver.wait_for(3)}
        stream, connect_span = spans["twilio.stream"], spans["stream.connect"]
        attributes = stream.attributes
        assert attributes["twilio.call_sid"] == call_sid
        assert attributes["switchyard.decision"] == "streamed"
        assert attributes["http.response.status_code"] == 101  # not 499: a WebSocket ends with its connection
        assert (attributes["switchyard.stream.frames.in"], attributes["switchyard.stream.bytes.in"]) == (50, 8000)
        assert attributes["switchyard.cost.stream_usd"] == pytest.approx(0.004)
        assert connect_span.span.parent_span_id == stream.span.span_id
        (connection,) = runtime.connections
        assert connection.headers["traceparent"].split("-")[2] == connect_span.span.span_id.hex()


async def test_a_stream_that_never_opens_lets_its_hold_go_with_the_call(
    make_app: MakeApp, runtime: MediaRuntime
) -> None:
    """Admission holds reserve_minutes of stream_minute on the budget; a call that ends before its
    stream opened (the caller hung up) lets it go with its final status callback, not at its TTL."""
    client = await make_app()
    call_sid = _call_sid(15)
    await answer(client, call_sid)
    services = client.app[SERVICES]
    day = utc_day(services.wall())
    assert (await services.ledger.spend("acme", day)).reserved == 10 * 4000
    completed = {"AccountSid": ACME_SID, "CallSid": call_sid, "CallStatus": "completed", "CallDuration": "3"}
    status, _ = await post(client, "/twilio/status", completed, ACME_TOKEN)
    assert status == 204
    assert (await services.ledger.spend("acme", day)).reserved == 0


async def test_a_redirecting_runtime_is_not_followed(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """A runtime answering the upgrade with a redirect is never followed (our signature and tenant
    header go to the policy's URL only): Twilio's socket is closed with 1011."""
    from aiohttp import web

    followed: list[str] = []

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        followed.append(request.path)
        return web.Response(status=404)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/elsewhere")

    app = web.Application()
    app.router.add_get("/elsewhere", elsewhere)
    app.router.add_get("/agent", redirect)
    await runtime.stop()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", runtime.port).start()
    try:
        client = await make_app()
        path, parameters, _ = await answer(client, _call_sid(16))
        twilio = await connect(client, path)
        await twilio.send_str(start(_call_sid(16), parameters))
        await asyncio.wait_for(receive_until_closed(twilio, []), 10)
        assert twilio.close_code == 1011
        assert followed == []
    finally:
        await runner.cleanup()


async def _relaying(client: Client) -> Relay:
    """Until the one open stream has begun relaying (the runtime answered its upgrade): its relay."""
    (stream,) = client.app[SERVICES].streams._open

    async def relay() -> Relay | None:
        return stream.relay

    return await first(relay, within=5, every=0.01)


@pytest.mark.parametrize("concurrent", [2, None], ids=["limited", "no limit"])
async def test_a_replayed_start_opens_no_second_relay(
    make_app: MakeApp, runtime: MediaRuntime, concurrent: int | None
) -> None:
    """The same admission token brought by a second socket while the first relays (a captured
    `start` replayed) is refused with 1008, whether the tenant limits its streams or not: one
    runtime connection, one slot, and the first stream's hold untouched."""
    client = await make_app(concurrent=concurrent)
    call_sid = _call_sid(20)
    path, parameters, _ = await answer(client, call_sid)
    first = await connect(client, path)
    await first.send_str(start(call_sid, parameters))
    await asyncio.wait_for(runtime.connected.wait(), 5)
    second = await connect(client, path)
    await second.send_str(start(call_sid, parameters))
    message = await asyncio.wait_for(second.receive(), 5)
    assert message.type is WSMsgType.CLOSE and second.close_code == 1008
    services = client.app[SERVICES]
    assert len(runtime.connections) == 1
    assert await services.leases.count("acme", "streams") == 1
    assert (await services.ledger.spend("acme", utc_day(services.wall()))).reserved == 10 * 4000
    await first.send_str(media.stop_message(STREAM_SID, 2, call_sid, ACME_SID))
    await asyncio.wait_for(receive_until_closed(first, []), 5)
    assert first.close_code == 1000


async def test_a_retried_webhook_holds_the_calls_one_slot(make_app: MakeApp, runtime: MediaRuntime) -> None:
    """concurrent_streams 1: the same call's webhook answered twice (a retry without Twilio's
    idempotency token, or a replay) is admitted twice on one slot; another call is refused."""
    client = await make_app(concurrent=1)
    for _ in range(3):
        _, _, root = await answer(client, _call_sid(21))
        assert root.find("Connect/Stream") is not None
    assert await client.app[SERVICES].leases.count("acme", "streams") == 1
    status, text = await post(client, "/twilio/voice", call_form(NUMBER, _call_sid(22)), ACME_TOKEN)
    assert status == 200 and ET.fromstring(text).find("Reject") is not None


async def test_a_silent_twilio_socket_is_closed(
    make_app: MakeApp, runtime: MediaRuntime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twilio sends audio every 20 ms while a stream is open: one that sends nothing for
    SILENT_AFTER (a half-open socket) is closed and its slot given back, long before max_duration."""
    monkeypatch.setattr(relay_module, "CHECK_EVERY", 0.02)
    client = await make_app(concurrent=1)
    path, parameters, _ = await answer(client, _call_sid(23))
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(23), parameters))
    await _relaying(client)
    clock.advance(relay_module.SILENT_AFTER + 1)
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    assert twilio.close_code == 1011
    (connection,) = runtime.connections
    await asyncio.wait_for(connection.closed.wait(), 5)
    services = client.app[SERVICES]
    await asyncio.wait_for(services.streams.drained(), 5)
    assert await services.leases.count("acme", "streams") == 0
    assert services.metrics.stream_ends.labels("acme", "twilio_silent")._value.get() == 1


@pytest.mark.parametrize("phase", ["before start", "relaying"])
async def test_a_shutdown_closes_open_streams_with_1001(make_app: MakeApp, runtime: MediaRuntime, phase: str) -> None:
    """A stream still waiting for its `start` is stopped by the shutdown as one that relays is:
    1001, so Twilio moves on to the fallback, and the slot is given back."""
    client = await make_app(concurrent=1)
    path, parameters, _ = await answer(client, _call_sid(24))
    twilio = await connect(client, path)
    await twilio.send_str(media.connected_message())
    services = client.app[SERVICES]
    if phase == "relaying":
        await twilio.send_str(start(_call_sid(24), parameters))
        await _relaying(client)
    await until(lambda: len(services.streams))  # the upgrade registered the stream
    closing = asyncio.create_task(receive_until_closed(twilio, []))  # Twilio answers the close
    await services.streams.stop_all("shutdown", within=5)
    await asyncio.wait_for(closing, 5)
    assert twilio.close_code == 1001
    assert len(services.streams) == 0
    assert await services.leases.count("acme", "streams") == (1 if phase == "before start" else 0)


async def test_the_budget_hold_lives_as_long_as_its_stream(
    make_app: MakeApp, runtime: MediaRuntime, clock: FakeClock
) -> None:
    """Held at admission only until a claim may come (CLAIM_TTL): a call whose stream never
    opens stops holding the budget then; a stream's claim extends it, so it outlives CLAIM_TTL."""
    client = await make_app()
    services = client.app[SERVICES]
    day = utc_day(services.wall())
    await answer(client, _call_sid(25))
    assert (await services.ledger.spend("acme", day)).reserved == 10 * 4000
    clock.advance(CLAIM_TTL)
    assert (await services.ledger.spend("acme", day)).reserved == 0

    path, parameters, _ = await answer(client, _call_sid(26))
    clock.advance(CLAIM_TTL - 1)
    twilio = await connect(client, path)
    await twilio.send_str(start(_call_sid(26), parameters))
    await _relaying(client)
    clock.advance(2)  # past the admission's CLAIM_TTL: the claim's extension holds it
    assert (await services.ledger.spend("acme", day)).reserved == 10 * 4000
    await twilio.send_str(media.stop_message(STREAM_SID, 2, _call_sid(26), ACME_SID))
    await asyncio.wait_for(receive_until_closed(twilio, []), 5)
    await asyncio.wait_for(services.streams.drained(), 5)
    assert (await services.ledger.spend("acme", day)).reserved == 0


async def test_an_admission_cut_short_gives_its_slot_back(
    make_app: MakeApp, runtime: MediaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook whose admission is cancelled after it took the slot (its deadline passed while
    the budget store hung) gives the slot back at once rather than at CLAIM_TTL."""
    client = await make_app(concurrent=1)
    services = client.app[SERVICES]
    entered = asyncio.Event()
    handlers: list[asyncio.Task[Any] | None] = []

    async def hang(*args: Any, **kwargs: Any) -> None:
        handlers.append(asyncio.current_task())  # the webhook's handler, inside the admission
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(services.ledger, "reserve", hang)
    posting = asyncio.create_task(post(client, "/twilio/voice", call_form(NUMBER, _call_sid(27)), ACME_TOKEN))
    await asyncio.wait_for(entered.wait(), 5)
    assert await services.leases.count("acme", "streams") == 1
    (handler,) = handlers
    assert handler is not None
    handler.cancel()

    async def slot_given_back() -> bool:
        return await services.leases.count("acme", "streams") == 0

    await until(slot_given_back)
    posting.cancel()


async def test_a_second_stream_of_the_call_keeps_the_slot_it_was_admitted_with(
    make_app: MakeApp, runtime: MediaRuntime
) -> None:
    """The call's next webhook (the fallback's <Redirect>) answered while its first stream is
    still closing: the first stream's end does not take the second admission's slot, the
    second stream is relayed, and the first token, replayed after its stream ended, is not."""
    client = await make_app(concurrent=2)
    services = client.app[SERVICES]
    call_sid = _call_sid(30)
    path, first_parameters, _ = await answer(client, call_sid)
    first_socket = await connect(client, path)
    await first_socket.send_str(start(call_sid, first_parameters))
    await _relaying(client)
    _, second_parameters, _ = await answer(client, call_sid)  # before the first stream ends
    await first_socket.send_str(media.stop_message(STREAM_SID, 2, call_sid, ACME_SID))
    await asyncio.wait_for(receive_until_closed(first_socket, []), 5)
    await asyncio.wait_for(services.streams.drained(), 5)
    assert await services.leases.count("acme", "streams") == 1  # the second admission's

    second_socket = await connect(client, path)
    await second_socket.send_str(start(call_sid, second_parameters))
    await _relaying(client)
    assert len(runtime.connections) == 2
    assert await services.leases.count("acme", "streams") == 1  # moved to the second stream

    replay = await connect(client, path)
    await replay.send_str(start(call_sid, first_parameters))
    message = await asyncio.wait_for(replay.receive(), 5)
    assert message.type is WSMsgType.CLOSE and replay.close_code == 1008
    assert len(runtime.connections) == 2


async def test_a_retry_cut_short_leaves_the_first_answers_slot(
    make_app: MakeApp, runtime: MediaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried webhook of a call already admitted, cancelled in its admission, gives back
    nothing: the slot is the first answer's, whose stream then claims it."""
    client = await make_app(concurrent=1)
    services = client.app[SERVICES]
    call_sid = _call_sid(31)
    path, parameters, _ = await answer(client, call_sid)
    entered = asyncio.Event()
    handlers: list[asyncio.Task[Any] | None] = []

    async def hang(*args: Any, **kwargs: Any) -> None:
        handlers.append(asyncio.current_task())
        entered.set()
        await asyncio.Event().wait()

    with monkeypatch.context() as patch:
        patch.setattr(services.ledger, "reserve", hang)
        retry = asyncio.create_task(post(client, "/twilio/voice", call_form(NUMBER, call_sid), ACME_TOKEN))
        await asyncio.wait_for(entered.wait(), 5)
        (handler,) = handlers
        assert handler is not None
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)
        retry.cancel()
    assert await services.leases.count("acme", "streams") == 1
    twilio = await connect(client, path)
    await twilio.send_str(start(call_sid, parameters))
    await _relaying(client)
    assert len(runtime.connections) == 1
