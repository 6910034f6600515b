"""Static actions: TwiML rendered once when the policy loads, answered as bytes.

No await and no allocation beyond the response on this path: the handler sends `reply` as is.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

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


class Stream(Strict):
    url: Annotated[str, Field(pattern=r"^wss?://[^?#]+$")] | None = None
    name: str | None = None
    # A bidirectional <Connect><Stream> carries only the caller's audio to us.
    track: Literal["inbound_track"] | None = None
    parameters: dict[Annotated[str, Field(min_length=1)], str] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _tenant_is_ours(cls, parameters: dict[str, str]) -> dict[str, str]:
        if "tenant" in parameters:
            raise ValueError("'tenant' is set by the gateway to the tenant id; choose another name")
        return parameters


class Message(Strict):
    text: Annotated[str, Field(min_length=1, max_length=1600)]


def _say(action: Say, _ctx: CompileContext) -> Compiled:
    return Compiled(twiml.say(action.text, voice=action.voice, language=action.language, hangup=action.hangup))


def _reject(action: Reject, _ctx: CompileContext) -> Compiled:
    return Compiled(twiml.reject(action.reason))


def _redirect(action: Redirect, _ctx: CompileContext) -> Compiled:
    return Compiled(twiml.redirect(action.url, action.method))


def _message(action: Message, _ctx: CompileContext) -> Compiled:
    return Compiled(twiml.message(action.text))


def _twiml(text: str, _ctx: CompileContext) -> Compiled:
    return Compiled(twiml.raw(text))


# Stands in for the public URL under `switchyard check`, which validates without one.
PLACEHOLDER_BASE = "wss://public-url.invalid"


def _stream(action: Stream, ctx: CompileContext) -> Compiled:
    url = action.url
    if url is None:
        base = ctx.websocket_base()
        if base is None:
            own = f"/t/{ctx.tenant_id}/stream"
            if not ctx.note(f"no url: the call goes to the gateway's own {own}, under the --public-url given to serve"):
                raise ValueError("needs a url, or the gateway's --public-url to hand the stream to itself")
            base = PLACEHOLDER_BASE
        url = f"{base}/t/{ctx.tenant_id}/stream"
    parameters = {"tenant": ctx.tenant_id, **action.parameters}
    return Compiled(twiml.stream(url, parameters, name=action.name, track=action.track))


SAY = ActionKind("say", Say, VOICE, _say)
REJECT = ActionKind("reject", Reject, VOICE, _reject)
REDIRECT = ActionKind("redirect", Redirect, VOICE, _redirect)
STREAM = ActionKind("stream", Stream, VOICE, _stream)
MESSAGE = ActionKind("message", Message, SMS, _message)
TWIML = ActionKind("twiml", str, BOTH, _twiml)
