"""Media Streams through one gateway process against a bare aiohttp relay, at real-time pace.

    .venv/bin/python loadtest/streams_bench.py [--streams 100] [--duration 10] [--rounds 3]
                                               [--max-streams 500] [--json FILE]

Issue 9: concurrent streams at Twilio's pace (50 frames/s each way, Twilio-shaped JSON), the
gateway against a bare aiohttp WebSocket relay that checks nothing, at the same bound on added
latency (p99 <= 5 ms over the direct path); the gateway must carry >= 0.8 x the bare relay's
streams. Three paths, measured alike in the same run:

  direct   client -> echo runtime                       (the baseline: no relay)
  bare     client -> loadtest/stream_relay.py -> echo   (aiohttp pumping frames, no checks)
  gateway  client -> `switchyard serve` -> echo         (webhook answered first: the admission
           token; then the signed upgrade, start, media, stop through the bridge)

The echo runtime (loadtest/stream_echo.py) sends each media frame's payload straight back as an
outbound media message. The load generator (worker processes here) opens N streams, sends
`connected` and `start`, waits for the runtime's `ready` mark (the whole path is up), then sends
each stream's media frames every 20 ms on a drift-free schedule (streams spread evenly over the
20 ms), each payload carrying its stream and sequence number, and times every echo on the
monotonic clock. Both frame their WebSockets by hand on asyncio Protocols and uvloop: they share
one CPU and must stay well under the relay's cost per stream, or they would saturate first (the
echo on aiohttp, --aiohttp-echo, measured a quarter to a half more CPU per stream).

The relay under test is pinned to the first CPU, alone; the echo, the load generator and this
process to the others. Relay CPU per stream = its CPU seconds / (N x seconds), over a window
that leaves out the streams' setup and teardown.

Two phases: rounds at --streams N (direct, bare, gateway, direct, bare, ... ; medians), then a
capacity search: N in steps of --step up to --max-streams, each step measuring direct then each
relay path still passing, a path passing while its added p99 (its RTT p99 - direct's at the same
N) is <= --added-p99-ms and no stream failed and no frame was lost or later than --late-ms;
then bisection between the last pass and the first failure down to --resolution. See
loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import random
import secrets
import shutil
import statistics
import struct
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import scenario
import traced
from stream_echo import CLOSE, PING, PONG, TEXT, parse_frames

HERE = Path(__file__).resolve().parent
PATHS = ("direct", "bare", "gateway")
RELAYS = ("bare", "gateway")
GOAL = 0.8  # gateway streams / bare relay streams, at the same added-latency bound
FRAME_S = 0.020  # Twilio: 20 ms of audio a media frame, 50 frames a second
AUDIO_BYTES = 160  # 20 ms of 8 kHz mu-law
RUNTIME_PATH = "/agent"
SETUP_CONCURRENCY = 32  # streams being opened at once, per load process
READY_WITHIN = 15.0  # s from the upgrade to the runtime's ready mark (the gateway connects within 5)
CLOSE_WITHIN = 5.0  # s for every stream to close after its stop
CLIENT_BUSY = 95.0  # % of a load-generator CPU: above it, the client side is the limit
CLIENT_LAG_MS = 5.0  # ms: a p99 of sends later than their schedule says the client fell behind
# The gateway's egress connector (gateway/egress.py; not imported: the bench loads no gateway
# code) allows 100 connections in all (aiohttp's default `limit`) and 100 per host
# (LIMIT_PER_HOST), and each open runtime WebSocket holds one: past this many streams the next
# ones wait for a slot, then fail (1011 after the bridge's 5 s connect timeout).
EGRESS_LIMIT = 100


# ------------------------------------------------------------------ wire (pure, unit-tested)

SEQ_HEAD = struct.Struct(">HI")  # stream (mod 65536), sequence number: 6 bytes = 8 base64 chars
HEAD_CHARS = 8
PAYLOAD_KEY = b'"payload":"'
MEDIA_TEMPLATE = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)  # gateway.protocol.media.twilio_media_message's bytes exactly (the unit test checks)


def filler(stream: int) -> str:
    """The base64 of a stream's audio after its 6-byte head: fixed pseudo-random mu-law bytes."""
    rng = random.Random(stream)
    return base64.b64encode(rng.randbytes(AUDIO_BYTES - SEQ_HEAD.size)).decode()


def payload(stream: int, seq: int, tail: str) -> str:
    """160 bytes of audio in base64 whose first 6 bytes say which stream and frame it is. The
    head is a multiple of 3 bytes, so its base64 and the tail's (`filler`) just concatenate."""
    return base64.b64encode(SEQ_HEAD.pack(stream & 0xFFFF, seq)).decode() + tail


def read_head(chars: bytes) -> tuple[int, int]:
    """(stream mod 65536, sequence number) from a payload's first 8 base64 characters."""
    stream, seq = SEQ_HEAD.unpack(base64.b64decode(chars))
    return int(stream), int(seq)


def media_frame(stream_sid: str, seq: int, body: str) -> str:
    """Frame `seq` (0-based) of a stream, as Twilio sends it: sequenceNumber counts from
    `start`'s 1, chunk from 1, timestamp in ms since the stream began."""
    return MEDIA_TEMPLATE % (seq + 2, seq + 1, seq * 20, body, stream_sid)


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def connected_message() -> str:
    return dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(stream_sid: str, call_sid: str, account_sid: str, parameters: dict[str, str]) -> str:
    """Twilio's start (gateway.protocol.media.start_message's shape)."""
    return dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": parameters,
            },
            "streamSid": stream_sid,
        }
    )


def stop_message(stream_sid: str, seq: int, call_sid: str, account_sid: str) -> str:
    return dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )


def client_frame(data: bytes, opcode: int = TEXT) -> bytes:
    """One final client frame. The masking key is zero (RFC 6455 allows any; the server unmasks
    all the same), so the payload goes as it is, with no XOR on the client's CPU."""
    n = len(data)
    if n < 126:
        return bytes((0x80 | opcode, 0x80 | n, 0, 0, 0, 0)) + data
    if n < 65536:
        return struct.pack("!BBH4x", 0x80 | opcode, 0xFE, n) + data
    return struct.pack("!BBQ4x", 0x80 | opcode, 0xFF, n) + data


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The nearest-rank p-th percentile of sorted values (None for none): the smallest value
    with at least p% of the values at or below it."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[min(len(ordered), int(rank)) - 1]


# ------------------------------------------------------------------ the load generator


@dataclass
class Tally:
    """One load process's counts over one probe (frames from `measured_from` on)."""

    rtts: array[float] = field(default_factory=lambda: array("d"))
    lags: array[float] = field(default_factory=lambda: array("d"))  # actual send - scheduled, s
    sent: int = 0
    received: int = 0
    late: int = 0  # echoes later than late_s
    bad: int = 0  # an echo of another stream, of a frame never sent, or twice, or altered
    gaps: int = 0  # an echo out of order (one missing before it)
    other: int = 0  # texts that are neither an echo nor the ready mark
    closed_early: Counter[str] = field(default_factory=Counter)  # streams closed before their stop


class Stream(asyncio.Protocol):
    """One Twilio-side WebSocket, framed by hand: send media, time each echo."""

    def __init__(
        self, index: int, host: str, path: str, headers: dict[str, str], frames: int, measured_from: int, tally: Tally
    ) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.tail = filler(index)
        self.tail_bytes = self.tail.encode()
        self.request = self._handshake(host, path, headers)
        self.sent_at = array("d", bytes(8 * frames))
        self.measured_from = measured_from
        self.late_s = 1.0
        self.tally = tally
        self.expect = 0
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.open = False  # upgraded and not closing
        self.streaming = False  # the runtime's ready mark came: the whole path is up
        self.stopping = False
        self.close_sent = False
        self.close_code: int | None = None
        self.sent_measured = 0
        self.received_measured = 0

    @staticmethod
    def _handshake(host: str, path: str, headers: dict[str, str]) -> bytes:
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade"]
        lines += [f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is one, unregistered
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.streaming and not self.stopping:  # a stream that failed to open is counted there
            self.tally.closed_early[f"closed {self.close_code or 'without a close frame'}"] += 1
        for future in (self.upgraded, self.ready):
            if not future.done():
                future.set_exception(ConnectionError(f"closed {self.close_code or '-'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if not self.upgraded.done():
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.1 ") else data[:20]
            if status != b"101":
                self.upgraded.set_exception(ConnectionError(f"handshake {status.decode(errors='replace')}"))
                self.stopping = True  # not a stream: no closed_early
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            self.upgraded.set_result(None)
            data = data[end + 4 :]
        frames, used = parse_frames(data)
        if used < len(data):
            self.buffer = data[used:]
        for first, body in frames:
            opcode = first & 0x0F
            if opcode == TEXT and first & 0x80:
                self.on_text(body, now)
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005
                self.close()
                self.open = False
                assert self.transport is not None
                self.transport.close()
                return
            elif opcode == PING:
                self.send(body, PONG)
            elif opcode != PONG:
                self.tally.bad += 1

    def on_text(self, body: bytes, now: float) -> None:
        begin = body.find(PAYLOAD_KEY)
        if begin < 0:
            if not self.ready.done() and b'"mark"' in body:
                self.streaming = True
                self.ready.set_result(None)
            else:
                self.tally.other += 1
            return
        begin += len(PAYLOAD_KEY)
        tally = self.tally
        try:
            stream, seq = read_head(body[begin : begin + HEAD_CHARS])
            sent = self.sent_at[seq]
        except (ValueError, IndexError, struct.error):
            tally.bad += 1
            return
        tail = self.tail_bytes
        if (
            stream != self.index & 0xFFFF
            or not sent
            or body[begin + HEAD_CHARS : begin + HEAD_CHARS + len(tail) + 1] != tail + b'"'
        ):
            tally.bad += 1
            return
        self.sent_at[seq] = 0.0  # a second echo of it is bad
        if seq != self.expect:
            tally.gaps += 1
        self.expect = seq + 1
        if seq >= self.measured_from:
            rtt = now - sent
            tally.rtts.append(rtt)
            self.received_measured += 1
            if rtt > self.late_s:
                tally.late += 1

    # -- sending

    def send(self, data: bytes, opcode: int = TEXT) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(data, opcode))

    def close(self) -> None:
        """Our close frame (1000), once: the first, or the answer to the server's."""
        if not self.close_sent:
            self.close_sent = True
            self.send(b"\x03\xe8", CLOSE)

    def send_media(self, seq: int) -> float:
        """Frame `seq`; when it was written."""
        frame = client_frame(media_frame(self.sid, seq, payload(self.index, seq, self.tail)).encode())
        assert self.transport is not None
        at = time.monotonic()
        self.transport.write(frame)
        self.sent_at[seq] = at
        if seq >= self.measured_from:
            self.sent_measured += 1
        return at

    def stop(self, frames: int) -> None:
        """Twilio's stop, then our close frame; the server closes."""
        self.stopping = True
        if self.open:
            self.send(stop_message(self.sid, frames + 2, self.call_sid, scenario.ACCOUNT_SID).encode())
            self.close()
        elif self.transport is not None:
            self.transport.close()


class Schedule:
    """Every stream's frames at t0 + phase + k x 20 ms, k = 0 .. frames-1: one timer for all, each
    wake sending what is due within the next millisecond (libuv's timers have ms resolution)."""

    AHEAD = 0.001

    def __init__(self, streams: Sequence[Stream], phases: Sequence[float], t0: float, frames: int, tally: Tally):
        order = sorted(range(len(streams)), key=lambda i: phases[i])
        self.streams = [streams[i] for i in order]
        self.phases = [phases[i] for i in order]
        self.t0, self.frames, self.tally = t0, frames, tally
        self.k = self.i = 0
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def start(self) -> None:
        if not self.streams or not self.frames:
            self.done.set_result(None)
            return
        self.loop.call_later(max(0.0, self.t0 - time.monotonic()), self.tick)

    def tick(self) -> None:
        streams, phases, n = self.streams, self.phases, len(self.streams)
        lags, measured_from = self.tally.lags, streams[0].measured_from
        horizon = time.monotonic() + self.AHEAD
        base = self.t0 + self.k * FRAME_S
        while True:
            due = base + phases[self.i]
            if due > horizon:
                break
            stream = streams[self.i]
            if stream.open:
                at = stream.send_media(self.k)
                if self.k >= measured_from:
                    lags.append(at - due)
            self.i += 1
            if self.i == n:
                self.i = 0
                self.k += 1
                if self.k == self.frames:
                    self.done.set_result(None)
                    return
                base = self.t0 + self.k * FRAME_S
        self.loop.call_later(max(self.AHEAD, due - self.AHEAD - time.monotonic()), self.tick)


async def _webhook(session: Any, spec: dict[str, Any], stream: int) -> tuple[str, dict[str, str]]:
    """The gateway's answer to a signed inbound call: the stream URL and its <Parameter>s."""
    rng = random.Random()
    numbers = spec["numbers"]
    params = scenario.voice_params(rng, to=numbers[stream % len(numbers)])
    url = spec["webhook_url"]
    headers = {
        **scenario.twilio_headers(scenario.sign(spec["token"], url, params)),
        "I-Twilio-Idempotency-Token": scenario.idempotency_token(),
    }
    async with session.post(url, data=urlencode(params), headers=headers) as response:
        text = await response.text()
        if response.status != 200:
            raise ConnectionError(f"webhook {response.status}")
    node = ET.fromstring(text).find("Connect/Stream")  # noqa: S314 - the gateway's answer to our request
    if node is None:
        raise ConnectionError("webhook answered no <Connect><Stream>")
    parameters = {p.get("name", ""): p.get("value", "") for p in node.findall("Parameter")}
    return node.get("url", ""), {**parameters, "CallSid": params["CallSid"]}


async def _open(spec: dict[str, Any], index: int, session: Any, tally: Tally) -> Stream:
    loop = asyncio.get_running_loop()
    headers: dict[str, str] = {}
    parameters: dict[str, str] = {}
    url = spec["url"]
    call_sid = None
    if spec["path"] == "gateway":
        url, parameters = await _webhook(session, spec, index)
        call_sid = parameters.pop("CallSid")
        headers["X-Twilio-Signature"] = scenario.sign(spec["token"], url, {})
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    frames, measured_from = spec["frames"], spec["measured_from"]
    path = parts.path or "/"

    def factory() -> Stream:
        return Stream(index, f"{host}:{port}", path, headers, frames, measured_from, tally)

    _, stream = await loop.create_connection(factory, host, port)
    stream.late_s = spec["late_s"]
    if call_sid is not None:
        stream.call_sid = call_sid
    try:
        async with asyncio.timeout(READY_WITHIN):
            await stream.upgraded
            stream.send(connected_message().encode())
            stream.send(start_message(stream.sid, stream.call_sid, scenario.ACCOUNT_SID, parameters).encode())
            await stream.ready
    except BaseException:
        stream.stopping = True
        if stream.transport is not None:
            stream.transport.abort()
        raise
    return stream


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait_message(conn: Connection) -> Any:
    """The next message from the bench, without blocking the loop."""
    loop = asyncio.get_running_loop()
    while not conn.poll():
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
            os.set_blocking(conn.fileno(), True)  # the loop made it non-blocking; conn.recv/send block
    return conn.recv()


async def run_probe(conn: Connection, spec: dict[str, Any]) -> dict[str, Any]:
    """Open this process's streams, say ready, run the schedule at the bench's t0, close."""
    import aiohttp

    tally = Tally()
    failures: Counter[str] = Counter()
    started = time.monotonic()
    semaphore = asyncio.Semaphore(SETUP_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=SETUP_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> Stream | None:
            async with semaphore:
                try:
                    return await _open(spec, index, session, tally)
                except TimeoutError:
                    failures["no ready mark in time"] += 1
                except (OSError, aiohttp.ClientError, ET.ParseError) as error:
                    failures[str(error) or type(error).__name__] += 1
                return None

        opened = await asyncio.gather(*(one(i) for i in spec["streams"]))
    streams = [s for s in opened if s is not None]
    conn.send(("ready", {"opened": len(streams), "failures": dict(failures), "setup_s": time.monotonic() - started}))
    message = await _wait_message(conn)
    assert message[0] == "go", message
    t0: float = message[1]
    total = spec["total"]
    phases = [FRAME_S * s.index / max(1, total) for s in streams]
    schedule = Schedule(streams, phases, t0, spec["frames"], tally)
    schedule.start()
    await schedule.done
    # Echoes still in flight: until all came or late_s passed.
    deadline = time.monotonic() + max(spec["late_s"], 0.5)
    while time.monotonic() < deadline:  # counted in callbacks: no event to wait on
        if not any(s.open and s.received_measured < s.sent_measured for s in streams):
            break
        await asyncio.sleep(0.01)
    for stream in streams:
        stream.stop(spec["frames"])
    closing = [s.closed for s in streams]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_WITHIN):
            await asyncio.gather(*closing)
    for stream in streams:
        if stream.transport is not None and not stream.closed.done():
            stream.transport.abort()
    tally.sent = sum(s.sent_measured for s in streams)
    tally.received = sum(s.received_measured for s in streams)
    return {
        "rtts": tally.rtts.tobytes(),
        "lags": tally.lags.tobytes(),
        "sent": tally.sent,
        "received": tally.received,
        "late": tally.late,
        "bad": tally.bad,
        "gaps": tally.gaps,
        "other": tally.other,
        "closed_early": dict(tally.closed_early),
    }


def worker_main(conn: Connection, cpus: set[int] | None) -> None:
    """A load process: probes on command until told to exit."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    while True:
        message = conn.recv()
        if message[0] == "exit":
            return
        assert message[0] == "open", message
        try:
            result = asyncio.run(run_probe(conn, message[1]))
        except Exception:  # the bench says what failed, then stops
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("done", result))


# ------------------------------------------------------------------ the bench


def policy_yaml(echo_ports: Sequence[int]) -> str:
    """The bench tenant with one bridged stream route per echo port (one number each); limits
    that never refuse, concurrent_streams included (so every stream takes and claims its lease)."""
    routes = "".join(
        f"""  - name: agent{i}
    match: {{kind: voice, to: ["{number}"]}}
    stream: {{upstream: "ws://127.0.0.1:{port}{RUNTIME_PATH}"}}
"""
        for i, (number, port) in enumerate(zip(shard_numbers(len(echo_ports)), echo_ports, strict=True))
    )
    numbers = ", ".join(f'"{n}"' for n in shard_numbers(len(echo_ports)))
    return f"""\
# Written by loadtest/streams_bench.py: one tenant, bridged streams to the echo runtime.
twilio:
  account_sid: {scenario.ACCOUNT_SID}
  auth_token_env: {scenario.TOKEN_ENV}
numbers: [{numbers}]
limits:
  webhooks: {{rate: {scenario.RATE}, per: second, burst: {scenario.RATE}}}
  voice: {{rate: {scenario.RATE}, per: second, burst: {scenario.RATE}}}
  concurrent_streams: 1000000
routes:
{routes}"""


def shard_numbers(count: int) -> list[str]:
    """The tenant's numbers: scenario.NUMBER, then the next ones."""
    base = int(scenario.NUMBER[1:])
    return [f"+{base + i}" for i in range(count)]


@dataclass
class Probe:
    """One path at N streams for one window."""

    path: str
    streams: int  # asked for
    opened: int
    seconds: float  # the measured window
    sent: int  # media frames sent in the window (and after: the warm-up frames are not counted)
    received: int
    lost: int  # sent, never echoed (or after the end of the wait)
    late: int  # echoed later than --late-ms
    bad: int
    gaps: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    lag_p99_ms: float | None  # the load generator's sends behind their schedule
    relay_cpu_pct: float | None  # the relay process (None for direct)
    cpu_per_stream_pct: float | None  # relay CPU per stream, % of one CPU
    us_per_frame: float | None  # relay CPU per frame relayed (each way counts)
    echo_cpu_pct: float
    client_cpu_pct: float  # the load processes
    setup_s: float
    busy_pct: dict[int, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # streams not opened, by reason
    closed_early: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)  # gateway: its streams' ends by reason (its metric)
    refused: int | None = None  # gateway: frames it did not relay (its metric)
    gateway_relay_us: float | None = None  # gateway: its own mean time per sampled frame, arrival to relayed
    added_p50_ms: float | None = None  # over the direct path at the same N
    added_p99_ms: float | None = None
    ok: bool | None = None
    why: str = ""


def client_bound(probe: Probe, client_cpus: set[int] | None) -> bool:
    """Did the load side (echo + load generator) run out of CPU or fall behind its schedule?"""
    busy = max((v for k, v in probe.busy_pct.items() if client_cpus is None or k in client_cpus), default=0.0)
    return busy >= CLIENT_BUSY or (probe.lag_p99_ms or 0.0) > CLIENT_LAG_MS


def judge(probe: Probe, direct: Probe, bound_ms: float) -> None:
    """Set the probe's added latency (over `direct`) and whether it passes."""
    if probe.p50_ms is not None and direct.p50_ms is not None:
        probe.added_p50_ms = round(probe.p50_ms - direct.p50_ms, 3)
    if probe.p99_ms is not None and direct.p99_ms is not None:
        probe.added_p99_ms = round(probe.p99_ms - direct.p99_ms, 3)
    probe.ok, probe.why = verdict(probe, bound_ms)
    refused = sum(n for why, n in probe.failures.items() if "1011" in why)
    if probe.path == "gateway" and refused and probe.streams > EGRESS_LIMIT:
        probe.why += (
            f" (each stream holds a connection of the gateway's egress pool, which has {EGRESS_LIMIT} in all and"
            f" {EGRESS_LIMIT} per host: gateway/egress.py, aiohttp's default limit and LIMIT_PER_HOST)"
        )


def verdict(probe: Probe, bound_ms: float | None) -> tuple[bool, str]:
    """Whether a probe passes (for direct: whether it is a valid baseline), and why not."""
    reasons = []
    if probe.opened < probe.streams:
        failed = ", ".join(f"{n} {why}" for why, n in probe.failures.items())
        reasons.append(f"{probe.streams - probe.opened} streams not opened ({failed})")
    if probe.closed_early:
        reasons.append("closed early: " + ", ".join(f"{n} {why}" for why, n in probe.closed_early.items()))
    if probe.lost:
        reasons.append(f"{probe.lost} frames lost")
    if probe.late:
        reasons.append(f"{probe.late} frames late")
    if probe.bad:
        reasons.append(f"{probe.bad} bad echoes")
    if probe.refused:
        reasons.append(f"the gateway refused {probe.refused} frames")
    odd = {why: n for why, n in probe.ends.items() if why != "stop"}
    if odd and not probe.failures:
        reasons.append("gateway stream ends: " + ", ".join(f"{n} {why}" for why, n in odd.items()))
    if bound_ms is not None and probe.added_p99_ms is not None and probe.added_p99_ms > bound_ms:
        reasons.append(f"added p99 {probe.added_p99_ms:.2f} ms > {bound_ms:g}")
    if bound_ms is not None and probe.p99_ms is None:
        reasons.append("no echo measured")
    return not reasons, "; ".join(reasons)


class StreamsBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server_cpus, self.client_cpus = bench.cpu_plan(not args.no_pin)
        self.token = scenario.demo_env()[scenario.TOKEN_ENV]
        self.echo: bench.Server | None = None
        self.echo_ports: list[int] = []
        self.relays: dict[str, bench.Server] = {}
        self.workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    # -- processes

    def start(self, workdir: Path) -> None:
        args = self.args
        self.echo_ports = [bench.free_port() for _ in range(args.runtime_ports)]
        argv = [sys.executable, str(HERE / "stream_echo.py")]
        for port in self.echo_ports:
            argv += ["--port", str(port)]
        if args.aiohttp_echo:
            argv.append("--aiohttp")
        self.echo = bench.spawn("echo", argv, workdir, self.client_cpus)
        self.echo.port = self.echo_ports[0]
        bench.wait_ready(self.echo)
        ports = ", ".join(str(p) for p in self.echo_ports)
        kind = "aiohttp" if args.aiohttp_echo else "framed by hand"
        print(
            f"  echo     pid {self.echo.proc.pid} on 127.0.0.1:{ports} (the runtime, {kind}: echoes media)", flush=True
        )
        upstream = f"ws://127.0.0.1:{self.echo_ports[0]}{RUNTIME_PATH}"
        if "bare" in args.paths:
            port = bench.free_port()
            argv = [sys.executable, str(HERE / "stream_relay.py"), "--port", str(port), "--upstream", upstream]
            self._start_relay("bare", argv, port, workdir, None)
            print(f"  bare     pid {self.relays['bare'].proc.pid} on 127.0.0.1:{port} -> {upstream}", flush=True)
        if "gateway" in args.paths:
            policies = workdir / "policies"
            policies.mkdir()
            (policies / f"{scenario.TENANT}.yaml").write_text(policy_yaml(self.echo_ports))
            port = bench.free_port()
            switchyard = bench.BIN / "switchyard"
            entry = [str(switchyard)] if switchyard.is_file() else [sys.executable, "-m", "gateway"]
            argv = [*entry, "serve", "--policies", str(policies), "--host", "127.0.0.1", "--port", str(port)]
            argv += ["--public-url", f"http://127.0.0.1:{port}", "--limiter", "memory://", "--workers", "1"]
            argv += ["--no-access-log"]
            env = traced.gateway_env({**os.environ, **scenario.demo_env()}, None)
            self._start_relay("gateway", argv, port, workdir, env)
            self.check_gateway()
            print(
                f"  gateway  pid {self.relays['gateway'].proc.pid} on 127.0.0.1:{port} -> {upstream}"
                f"{f' (and {len(self.echo_ports) - 1} more ports)' if len(self.echo_ports) > 1 else ''}:"
                " forged upgrade -> 403",
                flush=True,
            )
        context = multiprocessing.get_context("spawn")
        for _ in range(args.clients):
            mine, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, self.client_cpus), daemon=True)
            process.start()
            theirs.close()
            self.workers.append((process, mine))

    def _start_relay(self, name: str, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None) -> None:
        server = bench.spawn(name, argv, workdir, self.server_cpus, env)
        server.port = port
        self.relays[name] = server
        bench.wait_ready(server)

    def check_gateway(self) -> None:
        """An upgrade with a forged signature must be refused (403) before any WebSocket."""
        port = self.relays["gateway"].port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
            headers["Sec-WebSocket-Key"] = base64.b64encode(secrets.token_bytes(16)).decode()
            headers["X-Twilio-Signature"] = "forged"
            conn.request("GET", f"/t/{scenario.TENANT}/stream", headers=headers)
            status = conn.getresponse().status
        finally:
            conn.close()
        if status != 403:
            raise RuntimeError(f"gateway: a forged stream upgrade answered {status}, not 403")

    def stop(self) -> None:
        for process, conn in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("exit",))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        for server in self.relays.values():
            server.stop()
        if self.echo is not None:
            self.echo.stop()

    # -- one probe

    def spec(self, path: str, streams: list[int], total: int, duration: float) -> dict[str, Any]:
        args = self.args
        frames = round((args.warmup + duration) / FRAME_S)
        spec: dict[str, Any] = {
            "path": path,
            "streams": streams,
            "total": total,
            "frames": frames,
            "measured_from": round(args.warmup / FRAME_S),
            "late_s": args.late_ms / 1000,
        }
        if path == "direct":
            spec["url"] = f"ws://127.0.0.1:{self.echo_ports[0]}{RUNTIME_PATH}"
        elif path == "bare":
            spec["url"] = f"ws://127.0.0.1:{self.relays['bare'].port}{RUNTIME_PATH}"
        else:
            port = self.relays["gateway"].port
            spec["url"] = ""
            spec["webhook_url"] = f"http://127.0.0.1:{port}{scenario.VOICE_PATH}"
            spec["token"] = self.token
            spec["numbers"] = shard_numbers(len(self.echo_ports))
        return spec

    def probe(self, path: str, n: int, duration: float) -> Probe:
        args = self.args
        workers = self.workers
        gateway = self.relays.get("gateway") if path == "gateway" else None
        metrics_before = self.gateway_idle(gateway) if gateway is not None else {}
        for k, (_, conn) in enumerate(workers):
            conn.send(("open", self.spec(path, list(range(k, n, len(workers))), n, duration)))
        setup_timeout = 60 + 0.1 * n
        ready = [self._receive(conn, "ready", setup_timeout) for _, conn in workers]
        relay = self.relays.get(path)
        assert self.echo is not None
        t0 = time.monotonic() + 0.2
        for _, conn in workers:
            conn.send(("go", t0))
        window_start = t0 + args.warmup
        time.sleep(max(0.0, window_start - time.monotonic()))
        before = self._cpu(relay)
        time.sleep(max(0.0, window_start + duration - time.monotonic()))
        after = self._cpu(relay)
        done = [self._receive(conn, "done", duration + CLOSE_WITHIN + 30) for _, conn in workers]
        metrics = self.gateway_idle(gateway) if gateway is not None else {}
        delta = {k: v - metrics_before.get(k, 0.0) for k, v in metrics.items()}
        seconds: float = after["wall"] - before["wall"]
        rtts = sorted(x for d in done for x in _floats(d["rtts"]))
        lags = sorted(x for d in done for x in _floats(d["lags"]))
        sent = sum(int(d["sent"]) for d in done)
        received = sum(int(d["received"]) for d in done)
        failures: Counter[str] = Counter()
        closed_early: Counter[str] = Counter()
        for r in ready:
            failures.update(r["failures"])
        for d in done:
            closed_early.update(d["closed_early"])
        opened = sum(int(r["opened"]) for r in ready)
        relay_cpu: float | None = after["relay"] - before["relay"] if relay is not None else None
        # Frames the relay carried in the CPU window, each way: the measured frames span `duration`.
        frames_through = (sent + received) * seconds / duration

        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        def pct(cpu: float) -> float:
            return round(100 * cpu / max(seconds, 1e-9), 1)

        return Probe(
            path=path,
            streams=n,
            opened=opened,
            seconds=round(seconds, 2),
            sent=sent,
            received=received,
            lost=sent - received,
            late=sum(int(d["late"]) for d in done),
            bad=sum(int(d["bad"]) for d in done),
            gaps=sum(int(d["gaps"]) for d in done),
            p50_ms=ms(percentile(rtts, 50)),
            p90_ms=ms(percentile(rtts, 90)),
            p99_ms=ms(percentile(rtts, 99)),
            max_ms=ms(rtts[-1] if rtts else None),
            lag_p99_ms=ms(percentile(lags, 99)),
            relay_cpu_pct=None if relay_cpu is None else pct(relay_cpu),
            cpu_per_stream_pct=(
                None if relay_cpu is None or not opened else round(100 * relay_cpu / (opened * seconds), 4)
            ),
            us_per_frame=None
            if relay_cpu is None or not frames_through
            else round(1e6 * relay_cpu / frames_through, 1),
            echo_cpu_pct=pct(after["echo"] - before["echo"]),
            client_cpu_pct=pct(after["client"] - before["client"]),
            setup_s=round(max(float(r["setup_s"]) for r in ready), 2),
            busy_pct=bench.busy_percent(before["ticks"], after["ticks"]),
            failures=dict(failures),
            closed_early=dict(closed_early),
            ends={k[5:]: round(v) for k, v in delta.items() if k.startswith("ends:") and v},
            refused=round(delta["refused"]) if gateway is not None else None,
            gateway_relay_us=(
                round(1e6 * delta["relay_sum"] / delta["relay_count"], 1) if delta.get("relay_count") else None
            ),
        )

    def gateway_idle(self, gateway: bench.Server, within: float = 15.0) -> dict[str, float]:
        """The gateway's stream metrics once no stream is open (the last probe's are all closed)."""
        deadline = time.monotonic() + within
        while True:
            metrics = gateway_metrics(gateway.port)
            if metrics["open"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.2)  # a stream's end is counted just after it stops counting as open
        return gateway_metrics(gateway.port)

    def _cpu(self, relay: bench.Server | None) -> dict[str, Any]:
        assert self.echo is not None
        return {
            "wall": time.monotonic(),
            "ticks": bench.cpu_ticks(),
            "relay": bench.cpu_seconds(relay.proc.pid) if relay is not None else 0.0,
            "echo": bench.cpu_seconds(self.echo.proc.pid),
            "client": sum(bench.cpu_seconds(p.pid) for p, _ in self.workers if p.pid is not None),
        }

    def _receive(self, conn: Connection, kind: str, timeout: float) -> dict[str, Any]:
        if not conn.poll(timeout):
            raise RuntimeError(f"a load process sent no {kind!r} within {timeout:.0f}s")
        message = conn.recv()
        if message[0] == "error":
            raise RuntimeError(f"a load process failed:\n{message[1]}")
        if message[0] != kind:
            raise RuntimeError(f"a load process sent {message[0]!r}, not {kind!r}")
        result: dict[str, Any] = message[1]
        return result

    def alive(self) -> None:
        for server in [*self.relays.values(), *([self.echo] if self.echo else [])]:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")


def gateway_metrics(port: int) -> dict[str, float]:
    """From the gateway's /metrics: streams open, ends by reason ("ends:<reason>"), frames refused,
    and its relay-time histogram's sum and count (sampled frames, both directions)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = {"open": 0.0, "refused": 0.0, "relay_sum": 0.0, "relay_count": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        metric = name.split("{", 1)[0]
        if metric == "switchyard_streams_open":
            out["open"] += float(value)
        elif metric == "switchyard_stream_ends_total":
            reason = name.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in name else "?"
            out[f"ends:{reason}"] = out.get(f"ends:{reason}", 0.0) + float(value)
        elif metric == "switchyard_stream_frames_refused_total":
            out["refused"] += float(value)
        elif metric == "switchyard_stream_relay_seconds_sum":
            out["relay_sum"] += float(value)
        elif metric == "switchyard_stream_relay_seconds_count":
            out["relay_count"] += float(value)
    return out


def _floats(data: bytes) -> array[float]:
    values = array("d")
    values.frombytes(data)
    return values


# ------------------------------------------------------------------ phases


def run_rounds(sb: StreamsBench, args: argparse.Namespace) -> list[Probe]:
    probes: list[Probe] = []
    for index in range(1, args.rounds + 1):
        direct: Probe | None = None
        for path in args.paths:
            probe = sb.probe(path, args.streams, args.duration)
            sb.alive()
            if path == "direct":
                direct = probe
                probe.ok, probe.why = verdict(probe, None)
            elif direct is not None:
                judge(probe, direct, args.added_p99_ms)
            probes.append(probe)
            print_probe(f"round {index}", probe)
            time.sleep(args.pause)
    return probes


def run_search(sb: StreamsBench, args: argparse.Namespace) -> tuple[list[Probe], dict[str, Any]]:
    """The largest N each relay path carries within the bound: steps, then bisection."""
    probes: list[Probe] = []
    directs: dict[int, Probe] = {}
    client_limit: int | None = None  # the N at which the load side itself could not keep up

    def direct_at(n: int) -> Probe | None:
        nonlocal client_limit
        if client_limit is not None and n >= client_limit:
            return None
        if n not in directs:
            probe = sb.probe("direct", n, args.search_duration)
            sb.alive()
            probe.ok, probe.why = verdict(probe, None)
            if client_bound(probe, sb.client_cpus):
                probe.ok = False
                probe.why = (probe.why + "; " if probe.why else "") + "the load side is saturated or lagging"
            probes.append(probe)
            print_probe("search", probe)
            time.sleep(args.pause)
            if not probe.ok:
                client_limit = n if client_limit is None else min(client_limit, n)
                return None
            directs[n] = probe
        return directs[n]

    def passes(path: str, n: int) -> Probe | None:
        """The path at n, retried once on failure; None if the direct baseline is not valid."""
        for attempt in range(1 + args.retries):
            direct = direct_at(n)
            if direct is None:
                return None
            probe = sb.probe(path, n, args.search_duration)
            sb.alive()
            judge(probe, direct, args.added_p99_ms)
            probes.append(probe)
            print_probe("search" if not attempt else "retry", probe)
            time.sleep(args.pause)
            if probe.ok:
                return probe
        return probe

    relays = [p for p in RELAYS if p in args.paths]
    best = dict.fromkeys(relays, 0)
    failed: dict[str, Probe] = {}
    n = args.step
    while n <= args.max_streams and len(failed) < len(relays):
        for path in relays:
            if path in failed:
                continue
            probe = passes(path, n)
            if probe is None:
                break
            if probe.ok:
                best[path] = n
            else:
                failed[path] = probe
        if client_limit is not None:
            break
        n += args.step
    for path, first in list(failed.items()):  # bisection between the last pass and the first failure
        low, high = best[path], first.streams
        while high - low > args.resolution and client_limit is None:
            mid = (low + high) // 2
            tried = passes(path, mid)
            if tried is None:
                break
            if tried.ok:
                low = best[path] = mid
            else:
                high, failed[path] = mid, tried
    result: dict[str, Any] = {"client_limit": client_limit, "max_streams": args.max_streams, "paths": {}}
    for path in relays:
        fail = failed.get(path)
        result["paths"][path] = {
            "max_streams": best[path],
            "failed_at": fail.streams if fail else None,
            "why": fail.why if fail else "",
            "capped": fail is None,  # never failed: at least max_streams (or the load side's limit)
        }
    if "bare" in failed and "gateway" in best and best["bare"]:
        # Only a bare relay that failed somewhere has a capacity to compare with.
        result["ratio"] = round(best["gateway"] / best["bare"], 3)
    elif "gateway" in failed and "bare" in best and best["bare"]:
        # The bare relay's capacity is at least what it carried: the ratio is at most this.
        result["ratio_at_most"] = round(best["gateway"] / best["bare"], 3)
    return probes, result


# ------------------------------------------------------------------ output


def fmt(value: float | None, width: int = 6, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{'+' if sign else ''}{width}.{digits}f}"


def print_probe(label: str, p: Probe) -> None:
    busy = " ".join(f"cpu{cpu} {pct:.0f}%" for cpu, pct in p.busy_pct.items())
    text = (
        f"  {label:<7} {p.path:<7} N {p.opened:>4}/{p.streams:<4} rtt p50 {fmt(p.p50_ms)} p99 {fmt(p.p99_ms)} ms"
        f"  added p50 {fmt(p.added_p50_ms, sign=True)} p99 {fmt(p.added_p99_ms, sign=True)} ms"
    )
    if p.relay_cpu_pct is not None:
        text += (
            f"  relay {p.relay_cpu_pct:3.0f}% cpu {fmt(p.cpu_per_stream_pct, 5, 3)}%/stream"
            f" {fmt(p.us_per_frame, 4, 0)} us/frame"
        )
    if p.gateway_relay_us is not None:
        text += f" (in-gateway {p.gateway_relay_us:.0f} us/frame)"
    text += f"  echo {p.echo_cpu_pct:.0f}% client {p.client_cpu_pct:.0f}% lag p99 {fmt(p.lag_p99_ms, 4, 1)} ms"
    text += f"  [{busy}]"
    if p.ok is False:
        text += f"  !! {p.why}"
    print(text, flush=True)


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize_rounds(probes: Sequence[Probe], paths: Sequence[str]) -> dict[str, Any]:
    medians: dict[str, dict[str, float | None]] = {}
    for path in paths:
        mine = [p for p in probes if p.path == path]
        medians[path] = {
            key: median_of([getattr(p, key) for p in mine])
            for key in (
                "p50_ms",
                "p99_ms",
                "added_p50_ms",
                "added_p99_ms",
                "cpu_per_stream_pct",
                "us_per_frame",
                "gateway_relay_us",
            )
        }
        cpu = medians[path]["cpu_per_stream_pct"]
        medians[path]["streams_per_cpu"] = round(100 / cpu) if cpu else None
    out: dict[str, Any] = {"medians": medians}
    bare, gateway = (
        medians.get("bare", {}).get("cpu_per_stream_pct"),
        medians.get("gateway", {}).get("cpu_per_stream_pct"),
    )
    if bare and gateway:
        out["cpu_ratio"] = round(bare / gateway, 3)  # gateway streams per CPU over the bare relay's
    out["invalid"] = [asdict(p) for p in probes if p.ok is False]
    return out


def print_rounds(summary: dict[str, Any], streams: int, rounds: int) -> None:
    print(f"at {streams} streams, medians of {rounds} rounds (ms; added = path - direct, round by round):")
    print("  path     rtt p50 rtt p99  added p50 added p99  relay cpu/stream  streams/CPU  us/frame")
    for path, m in summary["medians"].items():
        per_cpu = "-" if m["streams_per_cpu"] is None else f"{m['streams_per_cpu']:.0f}"
        print(
            f"  {path:<8} {fmt(m['p50_ms'], 7)} {fmt(m['p99_ms'], 7)}  {fmt(m['added_p50_ms'], 9, sign=True)}"
            f" {fmt(m['added_p99_ms'], 9, sign=True)}  {fmt(m['cpu_per_stream_pct'], 15, 3)}% {per_cpu:>12}"
            f"  {fmt(m['us_per_frame'], 8, 0)}"
        )
    if "cpu_ratio" in summary:
        print(
            f"  gateway/bare by CPU per stream: {summary['cpu_ratio']:.3f} (streams one CPU would carry,"
            f" at 100% of it; goal for the streams carried: >= {GOAL})"
        )
    if summary["invalid"]:
        print(f"  !! {len(summary['invalid'])} round(s) lost, late or failed streams: see the !! lines above")


def print_search(result: dict[str, Any], bound_ms: float, late_ms: float) -> None:
    print(
        f"capacity (largest N with added p99 <= {bound_ms:g} ms, every stream opened, no frame lost or later"
        f" than {late_ms:g} ms):"
    )
    for path, r in result["paths"].items():
        if r["capped"]:
            limit = result["client_limit"]
            where = f"the load side's limit, {limit}" if limit else f"--max-streams {result['max_streams']}"
            text = f">= {r['max_streams']} (never failed up to {where})"
        else:
            text = f"{r['max_streams']} (failed at {r['failed_at']}: {r['why']})"
        print(f"  {path:<8} {text}")
    if result["client_limit"]:
        print(
            f"  !! the direct path itself failed at {result['client_limit']} streams: the echo and the load"
            " generator (on the other CPU) could not keep up, so larger N were not measured"
        )
    if "ratio" in result:
        met = "met" if result["ratio"] >= GOAL else "NOT met"
        at_least = ">= " if result["paths"]["gateway"]["capped"] else ""
        print(f"  gateway/bare {at_least}{result['ratio']:.3f} (goal >= {GOAL}: {met})")
    elif result.get("ratio_at_most", GOAL) < GOAL:
        print(f"  gateway/bare <= {result['ratio_at_most']:.3f} (goal >= {GOAL}: NOT met; the bare relay never failed)")
    elif "bare" in result["paths"] and "gateway" in result["paths"]:
        more = "a load side on more CPUs" if result["client_limit"] else "a higher --max-streams"
        print(f"  gateway/bare: not measured (the bare relay never failed; it needs {more})")


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=100, help="streams in the rounds (default 100)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path at --streams (default 3; 0: none)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of frames not counted first (default 1)")
    parser.add_argument("--paths", default="direct,bare,gateway", help="comma-separated; direct is always run")
    parser.add_argument(
        "--max-streams", type=int, default=500, help="the capacity search's top (default 500; 0: no search)"
    )
    parser.add_argument("--step", type=int, default=50, help="the search's step in N (default 50)")
    parser.add_argument("--resolution", type=int, default=25, help="bisect until pass and fail are this close")
    parser.add_argument("--search-duration", type=float, default=5.0, help="measured seconds per search probe")
    parser.add_argument("--retries", type=int, default=1, help="a failed search probe is tried again this often")
    parser.add_argument("--added-p99-ms", type=float, default=5.0, help="the bound on added p99 (default 5 ms)")
    parser.add_argument("--late-ms", type=float, default=100.0, help="an echo later than this is late (default 100)")
    parser.add_argument("--clients", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument(
        "--runtime-ports",
        type=int,
        default=1,
        help="echo ports, each its own route's upstream; streams spread over them (default 1)",
    )
    parser.add_argument("--aiohttp-echo", action="store_true", help="the echo runtime on aiohttp (costlier)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between probes (default 0.5)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every probe and the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (policies, logs)")
    args = parser.parse_args(argv)
    paths = {p.strip() for p in args.paths.split(",") if p.strip()} | {"direct"}
    if paths - set(PATHS):
        parser.error(f"--paths: unknown {', '.join(sorted(paths - set(PATHS)))}; use {', '.join(PATHS)}")
    args.paths = [p for p in PATHS if p in paths]
    if args.streams < 1 or args.step < 1 or args.clients < 1 or args.runtime_ports < 1:
        parser.error("--streams, --step, --clients and --runtime-ports must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sb = StreamsBench(args)
    if sb.client_cpus:
        os.sched_setaffinity(0, sb.client_cpus)  # this process too: the relay's CPU stays its own
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-streams-"))
    print(f"switchyard streams bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, workdir {workdir}")
    if sb.server_cpus:
        print(
            f"  pinned: the relay under test on CPU {sorted(sb.server_cpus)}; echo, load generator"
            f" ({args.clients} process{'es' if args.clients > 1 else ''}) and this bench on CPU"
            f" {sorted(sb.client_cpus or ())}"
        )
    else:
        print("  not pinned: relay CPU figures are still per process, but the paths share CPUs")
    print(
        f"  load: 50 media frames/s per stream each way (Twilio-shaped JSON, 160-byte payloads), {args.warmup:g} s"
        f" of warm-up frames per probe not counted"
    )
    rounds: list[Probe] = []
    search: list[Probe] = []
    rounds_summary: dict[str, Any] | None = None
    search_result: dict[str, Any] | None = None
    try:
        sb.start(workdir)
        # A short probe of each path: the whole path works before anything is measured.
        for path in args.paths:
            check = sb.probe(path, min(10, args.streams), 1.0)
            ok, why = verdict(check, None)
            if not ok:
                raise RuntimeError(f"{path}: the check probe failed: {why}")
        print(f"  checked: {', '.join(args.paths)} carry streams end to end", flush=True)
        if args.rounds > 0:
            rounds = run_rounds(sb, args)
            rounds_summary = summarize_rounds(rounds, args.paths)
        if args.max_streams > 0 and len(args.paths) > 1:
            search, search_result = run_search(sb, args)
    finally:
        sb.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if rounds_summary is not None:
        print_rounds(rounds_summary, args.streams, args.rounds)
    if search_result is not None:
        print_search(search_result, args.added_p99_ms, args.late_ms)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpus": {"server": sorted(sb.server_cpus or ()), "client": sorted(sb.client_cpus or ())},
            "rounds": [asdict(p) for p in rounds],
            "rounds_summary": rounds_summary,
            "search": [asdict(p) for p in search],
            "capacity": search_result,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    failed = bool(rounds_summary and rounds_summary["invalid"])
    if search_result is not None:
        failed = failed or search_result.get("ratio", GOAL) < GOAL or search_result.get("ratio_at_most", GOAL) < GOAL
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
