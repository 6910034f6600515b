"""Static actions: TwiML rendered once when the policy loads, answered as bytes (a `stream`
with its own `url` is one too: actions/stream.py).

No await and no allocation beyond the response on this path: the handler sends `reply` as is.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field

from gateway.actions.base import ActionKind, CompileContext, Compiled
from gateway.policy.base import Strict
from gateway.protocol import twiml

VOICE = frozenset({"voice"})
SMS = frozenset({"sms"})
BOTH = frozenset({"voice", "sms"})


class Say(Strict):
    text: Annotated[str, Field(min_length=1)]
    voice: str | None = None
    language: str | None = None
    hangup: bool = True


class Reject(Strict):
    reason: Literal["busy", "rejected"] = "busy"


class Redirect(Strict):
    url: Annotated[str, Field(pattern=r"^https?://")]
    method: Literal["GET", "POST"] = "POST"


class Message(Strict):
    text: Annotated[str, Field(min_length=1, max_length=1600)]


# What a policy writes, rendered once per distinct value: thousands of tenants share reject
# reasons, template replies and the same inline TwiML, and a render is 16-30 µs (ElementTree),
# a tenth of a policy load. Only policy text lands here, never a request's (LLM answers and
# the like are rendered by their own actions, uncached); bytes are immutable, so sharing is safe.
_say_bytes = lru_cache(maxsize=4096)(twiml.say)
_reject_bytes = lru_cache(maxsize=8)(twiml.reject)
_redirect_bytes = lru_cache(maxsize=1024)(twiml.redirect)
_message_bytes = lru_cache(maxsize=4096)(twiml.message)
_raw_bytes = lru_cache(maxsize=1024)(twiml.raw)


def _say(action: Say, _ctx: CompileContext) -> Compiled:
    return Compiled(_say_bytes(action.text, voice=action.voice, language=action.language, hangup=action.hangup))


def _reject(action: Reject, _ctx: CompileContext) -> Compiled:
    return Compiled(_reject_bytes(action.reason))


def _redirect(action: Redirect, _ctx: CompileContext) -> Compiled:
    return Compiled(_redirect_bytes(action.url, action.method))


def _message(action: Message, _ctx: CompileContext) -> Compiled:
    return Compiled(_message_bytes(action.text))


def _twiml(text: str, _ctx: CompileContext) -> Compiled:
    return Compiled(_raw_bytes(text))


SAY = ActionKind("say", Say, VOICE, _say)
REJECT = ActionKind("reject", Reject, VOICE, _reject)
REDIRECT = ActionKind("redirect", Redirect, VOICE, _redirect)
MESSAGE = ActionKind("message", Message, SMS, _message)
TWIML = ActionKind("twiml", str, BOTH, _twiml)
