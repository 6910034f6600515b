"""The DEMO runtime's OpenAI stand-in: `POST /v1/chat/completions`, answered offline.

It speaks OpenAI's wire format (DESIGN §4): a `Bearer` key checked, a completion with `choices`
and `usage`, errors as `{"error": {message, type, param, code}}`. The answer is no model's: a
canned line quoting the last user message, so the same question gets the same answer and no
network is needed. Token counts are the rough ~4 characters per token that OpenAI quotes.
Not for production.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

KEY_ENV = "DEMO_OPENAI_API_KEY"
API_KEY = web.AppKey("demo_openai_api_key", str)
CHARS_PER_TOKEN = 4
# Enough of the caller's words to show they arrived; the whole reply stays one or two SMS segments.
QUOTE = 100
DEFAULT_MAX_TOKENS = 150


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def tokens(text: str) -> int:
    """A rough token count: ~4 characters of English per token, at least 1."""
    return len(text) // CHARS_PER_TOKEN + 1


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def reply(words: str, max_tokens: int) -> str:
    """The canned answer: the caller's words quoted (cut at QUOTE), cut to ~max_tokens."""
    words = " ".join(words.split())
    quoted = words if len(words) <= QUOTE else words[: QUOTE - 1].rstrip() + "…"
    text = f'(demo model) You said: "{quoted}"' if quoted else "(demo model) You said nothing."
    return text[: max_tokens * CHARS_PER_TOKEN]


def completion(request: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The chat completion answering a validated request body."""
    messages = request["messages"]
    last_user = next(
        (_text(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), ""
    )
    limit = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX_TOKENS
    content = reply(last_user, limit)
    prompt_tokens = tokens("".join(_text(m.get("content")) for m in messages if isinstance(m, dict)))
    completion_tokens = tokens(content)
    # The same request gets the same id: handy when reading a log against a test.
    digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
    return {
        "id": f"chatcmpl-demo{digest}",
        "object": "chat.completion",
        "created": now,
        "model": request["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def problem(request: object) -> tuple[str, str] | None:
    """What is wrong with a request body, as (message, param), or None when it can be answered."""
    if not isinstance(request, dict):
        return "The request body must be a JSON object.", ""
    if not isinstance(request.get("model"), str) or not request["model"]:
        return "You must provide a model parameter.", "model"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array.", "messages"
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"'{name}' must be a positive integer.", name
    if request.get("stream"):
        return "The demo runtime does not stream; the gateway never asks it to.", "stream"
    return None


def _authorized(header: str, key: str) -> bool:
    scheme, _, given = header.partition(" ")
    # Constant time, as a real API compares keys; an empty key configured matches nothing.
    return bool(key) and scheme == "Bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


async def handle(request: web.Request) -> web.Response:
    """`POST /v1/chat/completions`: 401 for a wrong key, 400 for a malformed body, else a completion."""
    if not _authorized(request.headers.get("Authorization", ""), request.app[API_KEY]):
        # Never the key given, not even in part: this line may end up in someone's log.
        message = f"Incorrect API key provided. The demo runtime expects the value of {KEY_ENV}."
        return _error(401, message, "invalid_request_error", "invalid_api_key")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "The request body is not valid JSON.", "invalid_request_error", None)
    wrong = problem(body)
    if wrong is not None:
        message, param = wrong
        return _error(400, message, "invalid_request_error", None, param or None)
    answer = completion(body, int(time.time()))
    return web.Response(body=orjson.dumps(answer), content_type="application/json")
