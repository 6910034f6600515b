"""A tenant's runtime for tests: a real aiohttp server on 127.0.0.1 that checks the re-signed
X-Twilio-Signature with twilio's own RequestValidator, records what it got, and can be told to
misbehave (slow, 500, not TwiML, too big, connection closed); `answer` is what it answers when
it behaves (a test may make it a broken document)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from multidict import CIMultiDictProxy
from twilio.request_validator import RequestValidator

from tests.support.servers import serve
from tests.support.twilio import MultiDict

Mode = Literal["twiml", "slow", "error", "html", "huge", "close"]
TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response><Say>From the runtime.</Say></Response>'


@dataclass(frozen=True)
class Seen:
    """One request as the runtime received it."""

    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    signature_valid: bool
    query: str = ""


class Runtime:
    """POST any path: answers by `mode`; `seen` holds every request, in order."""

    def __init__(self, token: str, mode: Mode = "twiml") -> None:
        self.validator = RequestValidator(token)
        self.mode: Mode = mode
        self.answer = TWIML  # the body of a "twiml" answer
        self.seen: list[Seen] = []
        self.release = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str = "/twilio/voice") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner, self.port = await serve(app)

    async def wait_for(self, n: int, within: float = 5.0) -> None:
        """Until n requests have arrived (bounded)."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.seen) >= n)

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # The URL as the runtime sees itself, which is what the gateway must have signed.
        url = f"http://127.0.0.1:{self.port}{request.path_qs}"
        signature = request.headers.get("X-Twilio-Signature", "")
        if request.content_type == "application/json":
            valid = self.validator.validate(url, body.decode(), signature)
        else:
            form = await request.post()
            params = MultiDict({k: [str(v) for v in form.getall(k)] for k in form})
            valid = self.validator.validate(url, params, signature)
        self.seen.append(Seen(request.path, request.headers, body, valid, request.query_string))
        async with self._arrived:
            self._arrived.notify_all()
        if self.mode == "slow":
            await self.release.wait()
        if self.mode == "error":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "html":
            return web.Response(text="<html><body>Oops</body></html>", content_type="text/html")
        if self.mode == "huge":
            return web.Response(body=b"<Response>" + b" " * 200_000 + b"</Response>", content_type="text/xml")
        if self.mode == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.Response(body=self.answer, content_type="text/xml")
