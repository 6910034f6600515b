"""The demo runtime's Media Streams echo agent on 127.0.0.1: the upgrade checked with twilio's
RequestValidator, the caller's audio echoed with a mark each second, and a call from acme-health's
example policy streamed end to end through the gateway to it."""

from __future__ import annotations

import asyncio
import base64
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from twilio.request_validator import RequestValidator

from gateway.demo.runtime import create_app
from gateway.protocol import media
from tests.integration.test_demo import policies_for
from tests.support.gateway import PUBLIC, Client, MakeClient, post
from tests.support.servers import serve
from tests.support.twilio import ACME_NUMBER, ACME_SID, ACME_TOKEN, NORTHWIND_TOKEN, voice_params

TENANT = "acme-health"
STREAM_SID = "MZ" + "7" * 32
CALL_SID = "CA" + "7" * 32
FRAMES = 100  # 2 s of 20 ms frames: two marks
WITHIN = 5.0  # bounds a broken exchange, not a normal one


def _payload(i: int) -> str:
    """20 ms of μ-law, different for each frame, so an echo out of order would show."""
    return base64.b64encode(bytes([i % 256]) * 160).decode()


def _frames(count: int = FRAMES) -> list[str]:
    return [media.twilio_media_message(STREAM_SID, i + 3, i + 1, 20 * i, _payload(i)) for i in range(count)]


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    """The demo runtime knowing acme-health's and northwind's test tokens; its base URL."""
    runner, port = await serve(create_app({TENANT: ACME_TOKEN, "northwind": NORTHWIND_TOKEN}, ""))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _signed(url: str, token: str = ACME_TOKEN) -> dict[str, str]:
    """The upgrade's header as the gateway (and Twilio) signs it: the ws:// URL, no parameters."""
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, {})}


async def _receive(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, object]]:
    """The next `count` text frames, parsed."""
    got: list[dict[str, object]] = []
    async with asyncio.timeout(WITHIN):
        while len(got) < count:
            message = await ws.receive()
            assert message.type is WSMsgType.TEXT, message
            got.append(orjson.loads(message.data))
    return got


async def _until_closed(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, object]]:
    """What comes before the close, parsed."""
    got: list[dict[str, object]] = []
    async with asyncio.timeout(WITHIN):
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                got.append(orjson.loads(message.data))
    return got


def _echoed(frames: list[dict[str, object]]) -> list[str]:
    return [f["media"]["payload"] for f in frames if f["event"] == "media"]  # type: ignore[index]


def _marks(frames: list[dict[str, object]]) -> list[str]:
    return [f["mark"]["name"] for f in frames if f["event"] == "mark"]  # type: ignore[index]


async def test_a_signed_stream_is_echoed_with_a_mark_each_second(
    demo: str, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames echoed in order, a mark per 50, a digit gets clear + mark, stop closes 1000; names logged, no values."""
    caplog.set_level(logging.INFO, logger="switchyard.demo")
    url = f"ws://{demo.removeprefix('http://')}/{TENANT}/stream"
    async with http.ws_connect(url, headers=_signed(url)) as ws:
        await ws.send_str(media.connected_message())
        await ws.send_str(media.start_message(STREAM_SID, CALL_SID, ACME_SID, {"agent": "triage", "secret": "s3cr3t"}))
        for frame in _frames():
            await ws.send_str(frame)
        got = await _receive(ws, FRAMES + 2)
        assert {f["streamSid"] for f in got} == {STREAM_SID}
        assert _echoed(got) == [_payload(i) for i in range(FRAMES)]
        assert [f["event"] for f in got][49:52] == ["media", "mark", "media"] and got[-1]["event"] == "mark"
        assert _marks(got) == ["echo-50", "echo-100"]
        await ws.send_str(media.twilio_mark_message(STREAM_SID, 103, "echo-50"))
        await ws.send_str(media.dtmf_message(STREAM_SID, 104, "5"))
        clear, mark = await _receive(ws, 2)
        assert clear == {"event": "clear", "streamSid": STREAM_SID} and _marks([mark]) == ["dtmf-1"]
        await ws.send_str(media.stop_message(STREAM_SID, 105, CALL_SID, ACME_SID))
        assert await _until_closed(ws) == []
        assert ws.close_code == 1000
    logged = caplog.text
    assert f"{TENANT}/stream: start: echo agent answering; customParameters: agent, secret" in logged
    assert "triage" not in logged and "s3cr3t" not in logged
    assert f"{TENANT}/stream: stop: 100 frames echoed, 3 marks sent, 1 echoed back, 1 dtmf" in logged


async def test_forged_or_misdirected_upgrades_get_403_before_upgrading(demo: str, http: aiohttp.ClientSession) -> None:
    """Missing, made-up, wrong-URL or wrong-token signatures get 403 and no WebSocket; an unknown tenant 404."""
    host = demo.removeprefix("http://")
    url = f"ws://{host}/{TENANT}/stream"
    for headers in (
        {},
        {"X-Twilio-Signature": "forged"},
        _signed(f"http://{host}/{TENANT}/stream"),
        _signed(f"ws://{host}/northwind/stream"),
        _signed(url, NORTHWIND_TOKEN),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=headers)
        assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as unknown:
        await http.ws_connect(f"ws://{host}/nobody/stream", headers=_signed(f"ws://{host}/nobody/stream"))
    assert unknown.value.status == 404


async def test_a_call_streams_through_the_gateway_to_the_echo_agent(
    make_gateway: MakeClient, demo: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """acme-health's webhook hands the call to the gateway, which relays 100 frames to the agent: 100 echoes, 2 marks"""
    caplog.set_level(logging.INFO, logger="switchyard.demo")
    gateway: Client = await make_gateway(policies_dir=policies_for(demo, tmp_path))
    status, text = await post(gateway, "/twilio/voice", voice_params(to=ACME_NUMBER, CallSid=CALL_SID), ACME_TOKEN)
    assert status == 200
    stream = ET.fromstring(text).find("Connect/Stream")
    assert stream is not None, text
    url = stream.get("url", "")
    assert url == f"ws://{PUBLIC.removeprefix('http://')}/t/{TENANT}/stream"
    parameters = {p.get("name", ""): p.get("value", "") for p in stream}
    assert parameters.keys() == {"tenant", "agent", "switchyard_admission"}

    path = url.removeprefix("ws://gw.test")
    twilio = await gateway.ws_connect(path, headers=_signed(url))
    await twilio.send_str(media.connected_message())
    await twilio.send_str(media.start_message(STREAM_SID, CALL_SID, ACME_SID, parameters))
    for frame in _frames():
        await twilio.send_str(frame)
    got = await _receive(twilio, FRAMES + 2)
    assert _echoed(got) == [_payload(i) for i in range(FRAMES)]
    assert _marks(got) == ["echo-50", "echo-100"]
    for seq, name in enumerate(_marks(got), start=FRAMES + 3):
        await twilio.send_str(media.twilio_mark_message(STREAM_SID, seq, name))
    await twilio.send_str(media.stop_message(STREAM_SID, FRAMES + 5, CALL_SID, ACME_SID))
    assert await _until_closed(twilio) == []
    assert twilio.close_code == 1000
    await twilio.close()
    assert f"{TENANT}/stream: start: echo agent answering; customParameters: agent, tenant" in caplog.text
