"""OpenAI's chat completions wire format, pure: the request body we send, and what we read of the
answer (DESIGN §4: `POST {base}/v1/chat/completions`; `usage` with `prompt_tokens` and
`completion_tokens`; errors as `{"error": {...}}`; 429 with `retry-after`).

What is read of an answer is bounded and never its text in an error: errors name what was
wrong with the shape, so a log line or a span cannot carry a caller's words or a model's answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

CHAT_PATH = "/v1/chat/completions"
# Names from a third party that end up in spans and logs: short, of a name's characters.
MAX_NAME = 128
MAX_FINISH_REASONS = 8
_NAME = re.compile(r"[A-Za-z0-9_.:/@+-]{1,128}")
_RETRY_AFTER = re.compile(r"\d{1,6}(\.\d{1,3})?")


@dataclass(frozen=True, slots=True)
class Completion:
    """What we use of a chat completion: the first choice's text and the usage (None when the
    answer did not say)."""

    content: str
    model: str
    finish_reasons: tuple[str, ...]
    input_tokens: int | None
    output_tokens: int | None


def chat_request(
    model: str,
    system: str,
    user: str,
    max_tokens: int,
    temperature: float | None = None,
    limit_field: str = "max_tokens",
) -> bytes:
    """The JSON body: the route's system prompt, then the caller's words, one turn each.

    limit_field: OpenAI's reasoning models (o1, o3, gpt-5 …) refuse `max_tokens` and take
    `max_completion_tokens`; other OpenAI-compatible servers know only `max_tokens`."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        limit_field: max_tokens,
    }
    if temperature is not None:
        body["temperature"] = temperature
    return orjson.dumps(body)


def _name(value: object) -> str:
    return value if isinstance(value, str) and _NAME.fullmatch(value) else ""


def _tokens(usage: Mapping[str, object], key: str) -> int | None:
    value = usage.get(key)
    # bool is an int to Python, and no token count.
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_completion(body: bytes) -> Completion:
    """A 2xx answer's body → Completion; ValueError naming what is wrong (never the text) when
    it is no chat completion. A choice without text (null content: a refusal, a tool call) has
    content ""."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("no message in the first choice")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("the message content is not text")
    reasons = tuple(
        reason
        for choice in choices[:MAX_FINISH_REASONS]
        if isinstance(choice, dict) and (reason := _name(choice.get("finish_reason")))
    )
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        content=content or "",
        model=_name(data.get("model")),
        finish_reasons=reasons,
        input_tokens=_tokens(usage, "prompt_tokens"),
        output_tokens=_tokens(usage, "completion_tokens"),
    )


def error_code(body: bytes) -> str:
    """OpenAI's `error.code` (else `error.type`) of an error answer, when it has a name's shape;
    "" otherwise. Never `error.message`: it may quote the request."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return ""
    return _name(error.get("code")) or _name(error.get("type"))


def retry_after(value: str | None) -> str:
    """A `retry-after` header's seconds when it is a plain number, else "" (an HTTP date, or
    anything longer, is not worth a log line)."""
    value = (value or "").strip()
    return value if _RETRY_AFTER.fullmatch(value) else ""
