"""The pure parts of loadtest/streams_bench.py and stream_echo.py: frames as Twilio sends them,
the sequence number a payload carries, WebSocket framing, percentiles, the verdict on a probe,
and the bench policy (it loads)."""

from __future__ import annotations

import asyncio
import base64
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import scenario
import stream_echo
import streams_bench as sb

from gateway.policy.loader import LoadContext, load_dir
from gateway.protocol import media

SID = "MZ" + "a1" * 16
CALL = "CA" + "b2" * 16
ACCOUNT = "AC" + "c3" * 16


def test_frames_are_the_bytes_of_the_gateways_own_builders() -> None:
    """The load generator's templates write what gateway.protocol.media writes (Twilio's shape):
    so its media frames take the relay's fast path as Twilio's do."""
    body = sb.payload(7, 42, sb.filler(7))
    assert sb.media_frame(SID, 42, body) == media.twilio_media_message(SID, 44, 43, 840, body)
    assert sb.connected_message() == media.connected_message()
    parameters = {"tenant": "bench", "switchyard_admission": "t.o.k"}
    assert sb.start_message(SID, CALL, ACCOUNT, parameters) == media.start_message(SID, CALL, ACCOUNT, parameters)
    assert sb.stop_message(SID, 9, CALL, ACCOUNT) == media.stop_message(SID, 9, CALL, ACCOUNT)


@pytest.mark.parametrize(("stream", "seq"), [(0, 0), (7, 42), (65535, 2**32 - 1), (70000, 123456)])
def test_a_payload_is_20_ms_of_audio_that_says_which_stream_and_frame(stream: int, seq: int) -> None:
    tail = sb.filler(stream)
    text = sb.payload(stream, seq, tail)
    audio = base64.b64decode(text, validate=True)
    assert len(audio) == sb.AUDIO_BYTES
    assert audio[:6] == struct.pack(">HI", stream & 0xFFFF, seq)
    assert sb.read_head(text[: sb.HEAD_CHARS].encode()) == (stream & 0xFFFF, seq)
    assert text.endswith(tail) and sb.filler(stream) == tail  # the same audio for the same stream


def test_the_echo_is_a_runtimes_media_message_with_the_same_payload() -> None:
    body = sb.payload(3, 5, sb.filler(3))
    echo = stream_echo.echo_of(sb.media_frame(SID, 5, body), stream_echo.media_head(SID))
    assert echo == media.media_message(SID, body)
    assert stream_echo.ready_mark(SID) == media.mark_message(SID, "ready")
    assert stream_echo.echo_of('{"event":"media","media":{}}', stream_echo.media_head(SID)) is None


def _server_frame(data: bytes, opcode: int = stream_echo.TEXT) -> bytes:
    n = len(data)
    if n < 126:
        return bytes((0x80 | opcode, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + data
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + data


@pytest.mark.parametrize("size", [0, 5, 125, 126, 380, 65535, 65536])
def test_frames_are_parsed_whole_and_a_partial_one_is_left(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    stream = _server_frame(data) + _server_frame(b"\x03\xe8", stream_echo.CLOSE)
    for cut in {0, 1, 3, len(stream) - 5, len(stream) - 1}:
        frames, used = stream_echo.parse_frames(stream[:cut])
        assert used <= cut
        assert frames == ([(0x81, data)] if used else [])
        rest, more = stream_echo.parse_frames(stream[used:])
        assert frames + rest == [(0x81, data), (0x88, b"\x03\xe8")]
        assert used + more == len(stream)


@pytest.mark.parametrize("size", [3, 125, 126, 380, 70000])
def test_a_client_frame_is_masked_with_a_zero_key(size: int) -> None:
    """RFC 6455: a client masks every frame; a zero key leaves the payload as it is."""
    data = b"x" * size
    frame = sb.client_frame(data)
    assert frame[0] == 0x81 and frame[1] & 0x80
    assert frame.endswith(b"\0\0\0\0" + data)
    assert stream_echo.parse_frames(frame) == ([(0x81, data)], len(frame))
    close = sb.client_frame(b"\x03\xe8", stream_echo.CLOSE)
    assert close == b"\x88\x82\0\0\0\0\x03\xe8"


@pytest.mark.parametrize("size", [3, 126, 380, 70000])
def test_a_frame_masked_with_any_key_is_unmasked(size: int) -> None:
    """What the gateway's and the bare relay's aiohttp clients send the echo: masked, random keys."""
    data = bytes(i % 256 for i in range(size))
    key = b"\x9a\x01\xff\x37"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    head = sb.client_frame(data)[: -size - 4]  # the header with its mask bit and length, no key
    frame = head + key + masked
    assert stream_echo.parse_frames(frame) == ([(0x81, data)], len(frame))


def test_the_upgrade_answer_is_rfc_6455s() -> None:
    assert stream_echo.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert stream_echo.server_frame(b"hi") == b"\x81\x02hi"
    assert stream_echo.server_frame(b"x" * 380)[:4] == b"\x81\x7e\x01\x7c"


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert sb.percentile(values, 50) == 50
    assert sb.percentile(values, 99) == 99
    assert sb.percentile(values, 100) == 100
    assert sb.percentile(values, 0) == 1
    assert sb.percentile([3.0], 99) == 3.0
    assert sb.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 99) == 10.0
    assert sb.percentile([], 50) is None


def _probe(path: str, p50: float, p99: float, **fields: Any) -> sb.Probe:
    values: dict[str, Any] = {
        "path": path, "streams": 200, "opened": 200, "seconds": 5.0, "sent": 50_000, "received": 50_000,
        "lost": 0, "late": 0, "bad": 0, "gaps": 0, "p50_ms": p50, "p90_ms": p99, "p99_ms": p99, "max_ms": p99,
        "lag_p99_ms": 0.5, "relay_cpu_pct": None, "cpu_per_stream_pct": None, "us_per_frame": None,
        "echo_cpu_pct": 20.0, "client_cpu_pct": 20.0, "setup_s": 1.0,
    }  # fmt: skip
    values.update(fields)
    return sb.Probe(**values)


def test_a_path_passes_within_the_bound_over_direct_and_with_nothing_lost() -> None:
    direct = _probe("direct", 0.3, 0.9)
    within = _probe("bare", 0.5, 5.8)
    sb.judge(within, direct, 5.0)
    assert (within.added_p50_ms, within.added_p99_ms, within.ok) == (0.2, 4.9, True)
    over = _probe("bare", 0.5, 6.0)
    sb.judge(over, direct, 5.0)
    assert over.ok is False and "added p99 5.10 ms > 5" in over.why
    lost = _probe("gateway", 0.5, 1.0, lost=3, late=1)
    sb.judge(lost, direct, 5.0)
    assert lost.ok is False and "3 frames lost" in lost.why and "1 frames late" in lost.why


def test_streams_the_gateway_could_not_connect_past_its_pool_say_so() -> None:
    direct = _probe("direct", 0.3, 0.9)
    capped = _probe("gateway", 0.5, 1.0, opened=100, failures={"closed 1011": 100})
    sb.judge(capped, direct, 5.0)
    assert capped.ok is False and "100 streams not opened (100 closed 1011)" in capped.why
    assert "egress pool" in capped.why
    bare = _probe("bare", 0.5, 1.0, opened=100, failures={"closed 1011": 100})
    sb.judge(bare, direct, 5.0)
    assert "egress pool" not in bare.why


def test_a_load_side_out_of_cpu_or_behind_its_schedule_is_client_bound() -> None:
    assert not sb.client_bound(_probe("direct", 0.3, 0.9, busy_pct={0: 100.0, 1: 60.0}), {1})
    assert sb.client_bound(_probe("direct", 0.3, 0.9, busy_pct={0: 5.0, 1: 97.0}), {1})
    assert sb.client_bound(_probe("direct", 0.3, 0.9, lag_p99_ms=8.0), {1})


def test_the_bench_policy_loads_with_a_route_per_runtime_port(tmp_path: Path) -> None:
    (tmp_path / "bench.yaml").write_text(sb.policy_yaml([9001, 9002]))
    tenants = load_dir(tmp_path, LoadContext(env={scenario.TOKEN_ENV: "t" * 32}, public_url="http://127.0.0.1:1"))
    tenant = tenants["bench"]
    assert tenant.concurrent_streams == 1_000_000
    assert [route.name for route in tenant.routes] == ["agent0", "agent1"]
    assert sb.shard_numbers(2) == [scenario.NUMBER, "+15550100002"]


async def test_the_echo_answers_an_aiohttp_client_and_the_bench_client() -> None:
    """The hand-framed echo on a real socket: aiohttp's client (masked frames, as the relays send)
    gets the ready mark and each payload back; the load generator's own client times 5 echoes."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(stream_echo.Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 200 and await response.text() == "ok"
            async with session.ws_connect(f"ws://127.0.0.1:{port}/agent") as ws:
                await ws.send_str(media.start_message(SID, CALL, ACCOUNT))
                assert await ws.receive_str(timeout=5) == media.mark_message(SID, "ready")
                body = sb.payload(1, 0, sb.filler(1))
                await ws.send_str(sb.media_frame(SID, 0, body))
                assert await ws.receive_str(timeout=5) == media.media_message(SID, body)
                await ws.close()
                assert ws.close_code == 1000

        tally = sb.Tally()
        _, stream = await loop.create_connection(
            lambda: sb.Stream(3, f"127.0.0.1:{port}", "/agent", {}, 5, 0, tally), "127.0.0.1", port
        )
        async with asyncio.timeout(5):
            await stream.upgraded
            stream.send(sb.start_message(stream.sid, stream.call_sid, ACCOUNT, {}).encode())
            await stream.ready
            for seq in range(5):
                stream.send_media(seq)
            while len(tally.rtts) < 5:  # noqa: ASYNC110 - counted in the protocol's callback
                await asyncio.sleep(0.01)
            stream.stop(5)
            await stream.closed
        assert stream.sent_measured == stream.received_measured == 5
        assert (tally.bad, tally.gaps, tally.late, tally.other) == (0, 0, 0, 0)
        assert not tally.closed_early and stream.close_code == 1000
        assert all(0 < rtt < 5 for rtt in tally.rtts)
    finally:
        server.close()
