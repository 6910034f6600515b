"""Pydantic models of one tenant's policy file. Unknown keys are rejected everywhere.

This is the schema as written in YAML; loader.py turns it into the runtime Tenant
(compiled regexes, pre-rendered TwiML, resolved secrets). policies/README.md documents it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

E164 = r"^\+[1-9][0-9]{1,14}$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
Number = Annotated[str, Field(pattern=E164)]
EnvName = Annotated[str, Field(pattern=ENV_NAME)]
# strict: YAML `rate: yes` or `rate: "5"` is a mistake, not 1.0 or 5.0; finite: int(inf) has no meaning.
PositiveRate = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]

PER_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TwilioAccount(Strict):
    account_sid: Annotated[str, Field(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token_env: EnvName
    previous_auth_token_env: EnvName | None = None


class BucketRule(Strict):
    rate: PositiveRate
    per: Literal["second", "minute", "hour"] = "second"
    burst: Annotated[int, Field(ge=1)] | None = None


class Limits(Strict):
    """Named buckets, each charged by the request kinds its name says (see README)."""

    webhooks: BucketRule | None = None
    voice: BucketRule | None = None
    sms: BucketRule | None = None
    api: BucketRule | None = None
    concurrent_calls: Annotated[int, Field(ge=1)] | None = None
    concurrent_streams: Annotated[int, Field(ge=1)] | None = None
    on_store_failure: Literal["local", "open", "closed"] = "local"


class Match(Strict):
    kind: Literal["voice", "sms"]
    to: Annotated[list[Number], Field(min_length=1)] | None = None
    from_: Annotated[str | None, Field(alias="from")] = None
    body: str | None = None

    @field_validator("from_", "body")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _body_only_for_sms(self) -> Match:
        if self.body is not None and self.kind != "sms":
            raise ValueError("'body' can only match kind: sms")
        return self


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


class Route(Strict):
    """One route: a match and exactly one action."""

    name: str | None = None
    match: Match
    say: Say | None = None
    reject: Reject | None = None
    redirect: Redirect | None = None
    stream: Stream | None = None
    message: Message | None = None
    twiml: str | None = None
    fallback: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        actions = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(actions) != 1:
            found = ", ".join(actions) or "none"
            raise ValueError(f"a route needs exactly one of {', '.join(ACTIONS)} (found: {found})")
        voice_only = {"say", "reject", "redirect", "stream"}
        if self.match.kind == "sms" and actions[0] in voice_only:
            raise ValueError(f"action '{actions[0]}' answers a call; an sms route can use message or twiml")
        if self.match.kind == "voice" and actions[0] == "message":
            raise ValueError("action 'message' replies to an SMS; a voice route cannot use it")
        return self


ACTIONS = ("say", "reject", "redirect", "stream", "message", "twiml")


class ByKind(Strict):
    voice: str | None = None
    sms: str | None = None


class Api(Strict):
    jwt_secret_env: EnvName
    audience: str = "switchyard"
    issuer: str | None = None


class Policy(Strict):
    twilio: TwilioAccount
    numbers: list[Number] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    routes: list[Route] = Field(default_factory=list)
    fallback: ByKind = Field(default_factory=ByKind)
    refusal: ByKind = Field(default_factory=ByKind)
    api: Api | None = None

    @field_validator("numbers")
    @classmethod
    def _unique_numbers(cls, numbers: list[str]) -> list[str]:
        seen: set[str] = set()
        for number in numbers:
            if number in seen:
                raise ValueError(f"{number} is listed twice")
            seen.add(number)
        return numbers
