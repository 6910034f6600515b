"""An OpenAI-compatible chat completions server for tests: a real aiohttp server on 127.0.0.1
that answers `POST /v1/chat/completions` as OpenAI does (a completion with `usage`, or OpenAI's
error shape), records every request, and can be told to fail (slow, 401, 429, 500, not JSON,
empty text)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from tests.support.servers import serve

Mode = Literal["ok", "slow", "unauthorized", "rate_limited", "error", "garbage", "empty"]
REPLY = "We are open from 9am to 5pm, Monday to Friday."
PROMPT_TOKENS = 42
COMPLETION_TOKENS = 17
RETRY_AFTER = "20"


@dataclass(frozen=True)
class Chat:
    """One request as the server received it."""

    headers: CIMultiDictProxy[str]
    json: Any


def _error(status: int, message: str, kind: str, code: str | None, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


class ChatServer:
    """POST /v1/chat/completions: answers by `mode` with `reply`; `seen` holds every request."""

    def __init__(self, mode: Mode = "ok", reply: str = REPLY) -> None:
        self.mode: Mode = mode
        self.reply = reply
        self.seen: list[Chat] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Chat(request.headers, orjson.loads(body)))
        mode = self.mode
        if mode == "slow":
            await self.release.wait()
        if mode == "unauthorized":
            return _error(401, "Incorrect API key provided: sk-***.", "invalid_request_error", "invalid_api_key")
        if mode == "rate_limited":
            message = "Rate limit reached for requests"
            return _error(429, message, "requests", "rate_limit_exceeded", **{"retry-after": RETRY_AFTER})
        if mode == "error":
            return _error(500, "The server had an error while processing your request.", "server_error", None)
        if mode == "garbage":
            return web.Response(text="<html>Bad gateway</html>", content_type="application/json")
        content = "" if mode == "empty" else self.reply
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
        return web.Response(body=orjson.dumps(completion), content_type="application/json")
