"""A tenant's Media Streams runtime for tests: a real aiohttp WebSocket server on 127.0.0.1 that
checks the re-signed upgrade with twilio's RequestValidator, records every frame it gets, and
answers as told: echo (each media frame back, a mark after each `mark_every`), close after
start, never read (a runtime that stopped reading), or refuse the upgrade."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import WSMsgType, web
from multidict import CIMultiDictProxy
from twilio.request_validator import RequestValidator

from gateway.protocol import media
from tests.support.servers import serve

Mode = Literal["echo", "close", "silent", "refuse"]


@dataclass
class Connection:
    headers: CIMultiDictProxy[str]
    signature_valid: bool
    received: list[str] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class MediaRuntime:
    def __init__(self, token: str, mode: Mode = "echo", mark_every: int = 100) -> None:
        self.validator = RequestValidator(token)
        self.mode: Mode = mode
        self.mark_every = mark_every
        self.connections: list[Connection] = []
        self.connected = asyncio.Event()
        self.release = asyncio.Event()  # ends a silent runtime's wait (at stop)
        self._runner: web.AppRunner | None = None
        self._open: set[web.WebSocketResponse] = set()
        self.port = 0

    def url(self, path: str = "/agent") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        """Going away as a runtime would: its open sockets closed with 1001 first (a server's
        cleanup otherwise waits its whole shutdown timeout for their handlers)."""
        self.release.set()
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close(code=1001) for ws in self._open), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "refuse":
            return web.Response(status=403)
        url = f"ws://127.0.0.1:{self.port}{request.path_qs}"
        valid = self.validator.validate(url, {}, request.headers.get("X-Twilio-Signature", ""))
        connection = Connection(request.headers, valid)
        self.connections.append(connection)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connected.set()
        self._open.add(ws)
        try:
            if self.mode == "silent":
                # Stops reading: the gateway's sends must back up, not its memory.
                await self.release.wait()
                return ws
            sid = ""
            n = 0
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                connection.received.append(message.data)
                event = orjson.loads(message.data)
                if event["event"] == "start":
                    sid = event["start"]["streamSid"]
                    if self.mode == "close":
                        break
                elif event["event"] == "media" and self.mode == "echo":
                    await ws.send_str(media.media_message(sid, event["media"]["payload"]))
                    n += 1
                    if n % self.mark_every == 0:
                        await ws.send_str(media.mark_message(sid, f"m{n}"))
        finally:
            self._open.discard(ws)
            await ws.close()
            connection.close_code = ws.close_code
            connection.closed.set()
        return ws
