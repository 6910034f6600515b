"""The streams benchmark's runtime: a WebSocket server that echoes each media frame at once.

Each `media` frame from the caller's side comes straight back as the outbound `media` message a
runtime sends to Twilio (`{"event":"media","streamSid":…,"media":{"payload":…}}`, the shape of
gateway.protocol.media.media_message), with the same payload: the load generator reads its
sequence number from the payload and times the round trip. On `start` it sends one `mark`
named `ready`, so the client knows the whole path is up before the clock starts. It never closes
first: the caller's side ends each stream (`stop`, then its close), so through the gateway every
stream ends as `stop`, not as a race between the stop and the runtime's close. No checks, no
JSON parse of media frames, no access log, uvloop.

By default the WebSocket is framed by hand on an asyncio Protocol (RFC 6455's handshake, masked
client frames, text, ping, close; no extensions, no fragments: neither the gateway's client nor
aiohttp's sends them): it runs on the load generator's CPU, and aiohttp's server there cost as
much CPU per stream as the bare relay under test, so the load side would saturate before the
relay did. `--aiohttp` serves the same echo from an aiohttp app instead.

    .venv/bin/python loadtest/stream_echo.py --port 8095 [--port 8096 ...] [--aiohttp]

Any path is a WebSocket (the policies name /agent); GET /healthz answers ok. Several --port:
one process listening on each (the gateway's per-host connection pool is per port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import struct
import sys

from aiohttp import WSMsgType, web

MEDIA_HEAD = '{"event":"media",'
PAYLOAD_KEY = '"payload":"'
MAX_MESSAGE = 64 * 1024


def media_head(stream_sid: str) -> str:
    """An outbound media message up to its payload."""
    return '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"'


MEDIA_TAIL = '"}}'


def ready_mark(stream_sid: str) -> str:
    return '{"event":"mark","streamSid":"' + stream_sid + '","mark":{"name":"ready"}}'


def echo_of(text: str, head: str) -> str | None:
    """The outbound media message echoing a Twilio media frame's payload; None if it has none."""
    begin = text.find(PAYLOAD_KEY)
    if begin < 0:
        return None
    begin += len(PAYLOAD_KEY)
    end = text.find('"', begin)
    if end < 0:
        return None
    return head + text[begin:end] + MEDIA_TAIL


TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_MASK = b"\0\0\0\0"


def parse_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The complete frames at the start of `buf`, as (first byte: FIN and opcode, payload
    unmasked), and how many bytes they took; a partial frame is left for the next read."""
    frames: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        first, second = buf[pos], buf[pos + 1]
        n, head = second & 0x7F, 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        masked = second & 0x80
        if masked:
            head += 4
        if end - pos < head + n:
            break
        data = buf[pos + head : pos + head + n]
        if masked:
            key = buf[pos + head - 4 : pos + head]
            if key != _NO_MASK:  # XOR as one big integer: ~1 µs for a media frame
                mask = (key * (n // 4 + 1))[:n]
                data = (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")
        frames.append((first, data))
        pos += head + n
    return frames, pos


def server_frame(data: bytes, opcode: int = TEXT) -> bytes:
    """One final, unmasked frame (a server's)."""
    n = len(data)
    if n < 126:
        return bytes((0x80 | opcode, n)) + data
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + data
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + data


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - the protocol's hash


class Echo(asyncio.Protocol):
    """One connection: the upgrade (or /healthz), then the echo."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.head = media_head("").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport: asyncio.Transport's methods

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            if not self.upgrade(data[:end]):
                return
            data = data[end + 4 :]
        frames, used = parse_frames(data)
        if used < len(data):
            self.buffer = data[used:]
        write = self.write
        for first, body in frames:
            opcode = first & 0x0F
            if opcode == TEXT:
                self.on_text(body)
            elif opcode == CLOSE:
                write(server_frame(body[:2], CLOSE))
                assert self.transport is not None
                self.transport.close()
                return
            elif opcode == PING:
                write(server_frame(body, PONG))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def upgrade(self, request: bytes) -> bool:
        lines = request.split(b"\r\n")
        parts = lines[0].split(b" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        key = headers.get(b"sec-websocket-key")
        assert self.transport is not None
        if len(parts) < 2 or parts[1] == b"/healthz" or key is None:
            ok = len(parts) > 1 and parts[1] == b"/healthz"
            status = b"200 OK" if ok else b"400 Bad Request"
            body = b"ok" if ok else b"a WebSocket upgrade, or GET /healthz"
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            self.transport.close()
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.upgraded = True
        return True

    def on_text(self, body: bytes) -> None:
        if body.startswith(_MEDIA_HEAD):
            begin = body.find(_PAYLOAD_KEY)
            if begin >= 0:
                begin += len(_PAYLOAD_KEY)
                end = body.find(b'"', begin)
                if end >= 0:
                    self.write(server_frame(self.head + body[begin:end] + _MEDIA_TAIL))
            return
        try:
            event = json.loads(body)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("event") == "start":
            sid = str(event.get("start", {}).get("streamSid", ""))
            self.head = media_head(sid).encode()
            self.write(server_frame(ready_mark(sid).encode()))


_MEDIA_HEAD = MEDIA_HEAD.encode()
_PAYLOAD_KEY = PAYLOAD_KEY.encode()
_MEDIA_TAIL = MEDIA_TAIL.encode()


# ------------------------------------------------------------------ the same echo, on aiohttp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def agent(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    head = media_head("")
    async for message in ws:
        if message.type is not WSMsgType.TEXT:
            continue
        text: str = message.data
        if text.startswith(MEDIA_HEAD):
            echo = echo_of(text, head)
            if echo is not None:
                await ws.send_str(echo)
            continue
        try:
            event = json.loads(text)
        except ValueError:
            continue
        kind = event.get("event") if isinstance(event, dict) else None
        if kind == "start":
            sid = str(event.get("start", {}).get("streamSid", ""))
            head = media_head(sid)
            await ws.send_str(ready_mark(sid))
    await ws.close()
    return ws


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{path:.*}", agent)
    return app


async def serve(host: str, ports: list[int], on_aiohttp: bool) -> None:
    loop = asyncio.get_running_loop()
    runner: web.AppRunner | None = None
    servers: list[asyncio.Server] = []
    if on_aiohttp:
        runner = web.AppRunner(create_app(), access_log=None, handle_signals=False)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, host, port, backlog=1024).start()
    else:
        for port in ports:
            servers.append(await loop.create_server(Echo, host, port, backlog=1024))
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
    finally:
        for server in servers:
            server.close()
        if runner is not None:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, action="append", help="repeatable (default 8095)")
    parser.add_argument("--aiohttp", action="store_true", help="serve the echo from an aiohttp app")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("stream_echo: uvloop missing, running on asyncio's loop", file=sys.stderr)
    asyncio.run(serve(args.host, args.port or [8095], args.aiohttp))


if __name__ == "__main__":
    main()
