"""Pydantic models of one tenant's policy file. Unknown keys are rejected everywhere.

This is the schema as written in YAML; loader.py turns it into the runtime Tenant
(compiled regexes, pre-rendered TwiML, resolved secrets). policies/README.md documents it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, create_model, field_validator, model_validator

from gateway.actions import ACTIONS
from gateway.policy.base import Strict

E164 = r"^\+[1-9][0-9]{1,14}$"
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
Number = Annotated[str, Field(pattern=E164)]
EnvName = Annotated[str, Field(pattern=ENV_NAME)]
# strict: YAML `rate: yes` or `rate: "5"` is a mistake, not 1.0 or 5.0; finite: int(inf) has no meaning.
PositiveRate = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]

# Dollars: finite, never negative; strict like the rates (`price: "0.01"` is a quoting mistake).
Usd = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
PositiveUsd = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]

PER_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


class TwilioAccount(Strict):
    account_sid: Annotated[str, Field(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token_env: EnvName
    previous_auth_token_env: EnvName | None = None
    # Twilio's total time for this account's webhooks: 15 s unless its URLs say otherwise with a
    # `#tt=` fragment, which never reaches us, so the policy must say it.
    webhook_timeout_ms: Annotated[int, Field(ge=1000, le=15_000, strict=True)] = 15_000


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
    # Charged by each call of an `llm` action (a model's answer costs money and the provider's
    # own quota): apart from the webhook buckets, so a burst of texts cannot drain either.
    llm: BucketRule | None = None
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


class RouteBase(Strict):
    """One route: a match and exactly one action (the action keys come from gateway.actions)."""

    name: str | None = None
    match: Match
    fallback: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> RouteBase:
        found = [name for name in ACTIONS if getattr(self, name, None) is not None]
        if len(found) != 1:
            listed = ", ".join(found) or "none"
            raise ValueError(f"a route needs exactly one of {', '.join(ACTIONS)} (found: {listed})")
        kind = ACTIONS[found[0]]
        if self.match.kind not in kind.kinds:
            answers = "answers a call" if kind.kinds == {"voice"} else "replies to an SMS"
            usable = [name for name, other in ACTIONS.items() if self.match.kind in other.kinds]
            choices = ", ".join(usable[:-1]) + " or " + usable[-1] if len(usable) > 1 else usable[0]
            article = "an" if self.match.kind == "sms" else "a"
            raise ValueError(f"action '{found[0]}' {answers}; {article} {self.match.kind} route can use {choices}")
        return self

    def action(self) -> tuple[str, object]:
        """The route's one action: its name and validated value."""
        for name in ACTIONS:
            value = getattr(self, name, None)
            if value is not None:
                return name, value
        raise AssertionError("validated routes have exactly one action")


# The action fields are generated from the registry, so a new action needs no edit here.
if TYPE_CHECKING:
    Route = RouteBase
else:
    Route = create_model(
        "Route",
        __base__=RouteBase,
        __doc__=RouteBase.__doc__,
        **{name: (kind.schema | None, None) for name, kind in ACTIONS.items()},
    )


class ByKind(Strict):
    voice: str | None = None
    sms: str | None = None


JwtAlgorithm = Literal["HS256", "RS256", "ES256"]


class ApiKey(Strict):
    """One key API tokens may be signed with; its algorithm is pinned (a token naming another
    is refused), and `kid` is how a token picks it."""

    kid: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    alg: JwtAlgorithm
    secret_env: EnvName | None = None  # HS256: the shared secret, from the environment
    public_key_env: EnvName | None = None  # RS256/ES256: a PEM public key, from the environment
    public_key_file: Annotated[str, Field(min_length=1)] | None = None  # ... or a PEM file

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        given = [n for n in ("secret_env", "public_key_env", "public_key_file") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"a key needs exactly one of secret_env, public_key_env, public_key_file (found: {given})")
        if (self.alg == "HS256") != (given[0] == "secret_env"):
            wants = "secret_env" if self.alg == "HS256" else "public_key_env or public_key_file"
            raise ValueError(f"alg {self.alg} takes {wants}")
        return self


class Api(Strict):
    jwt_secret_env: EnvName | None = None  # shorthand for one HS256 key with no kid
    keys: list[ApiKey] = Field(default_factory=list)
    # A JSON Web Key Set (RS256/ES256 keys by kid), fetched when first needed and again every
    # jwks_refresh_s, or sooner (at most every 30 s) when a token names a kid it lacks.
    jwks_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    jwks_refresh_s: Annotated[int, Field(ge=30, le=86_400, strict=True)] = 300
    audience: str = "switchyard"
    issuer: str | None = None
    # With it, a token must carry the scope an endpoint needs; without it, a token with no
    # scope claim may call every endpoint (one with a scope claim is held to it either way).
    require_scopes: bool = False

    @model_validator(mode="after")
    def _some_key(self) -> Api:
        if self.jwt_secret_env is None and not self.keys and self.jwks_url is None:
            raise ValueError("api needs a key: jwt_secret_env, keys or jwks_url")
        kids = [k.kid for k in self.keys if k.kid is not None]
        if len(kids) != len(set(kids)):
            raise ValueError("two keys have the same kid")
        return self


E164_PREFIX = r"^\+[0-9]{1,15}$"
CallEvent = Literal["initiated", "ringing", "answered", "completed"]


class Outbound(Strict):
    """Calls placed for the tenant through the outbound API (POST /api/v1/calls)."""

    # The account's calls per second: Twilio's default is 1; over it Twilio queues the calls.
    cps: PositiveRate = 1.0
    # E.164 prefixes a call may go to (empty: any) and may not (checked after to_allow).
    to_allow: list[Annotated[str, Field(pattern=E164_PREFIX)]] = Field(default_factory=list)
    to_deny: list[Annotated[str, Field(pattern=E164_PREFIX)]] = Field(default_factory=list)
    # TwiML URLs a call may be given; a call may also name one of the tenant's voice routes
    # with a static answer (its TwiML is sent inline). Arbitrary TwiML only with allow_twiml.
    urls: list[Annotated[str, Field(pattern=r"^https?://[^\s]+$")]] = Field(default_factory=list)
    allow_twiml: bool = False
    # Over concurrent_calls: at most queue_max requests wait, each at most queue_timeout_ms.
    queue_max: Annotated[int, Field(ge=0, le=10_000, strict=True)] = 10
    queue_timeout_ms: Annotated[int, Field(ge=0, le=60_000, strict=True)] = 10_000
    ring_timeout_s: Annotated[int, Field(ge=1, le=600, strict=True)] = 60  # Twilio's `timeout`
    time_limit_s: Annotated[int, Field(ge=1, le=14_400, strict=True)] = 14_400  # Twilio's `time_limit`
    # The tenant's own status callback: what Twilio tells the gateway about a call or text the
    # API placed is forwarded there, signed anew for it. Only this URL, never one from a request.
    # (Printable ASCII: it goes on a request line as it is written.)
    status_callback: Annotated[str, Field(pattern=r"^https?://[!-\"$-~]+$")] | None = None
    # A call's events Twilio reports (besides `completed`, always asked for: the gateway needs
    # the final status to free the call's slot).
    status_events: list[CallEvent] = Field(default_factory=lambda: list[CallEvent](["completed"]))

    @model_validator(mode="after")
    def _events_go_somewhere(self) -> Outbound:
        if self.status_callback is None and set(self.status_events) - {"completed"}:
            raise ValueError("status_events other than completed need a status_callback to forward them to")
        return self


class ModelPrice(Strict):
    input_per_1m: Usd = 0.0
    output_per_1m: Usd = 0.0


class Prices(Strict):
    """USD per unit. There are no built-in prices: a price not given is 0, so not charged."""

    webhook: Usd = 0.0
    voice_minute: Usd = 0.0
    stream_minute: Usd = 0.0
    sms_segment: Usd = 0.0
    models: dict[Annotated[str, Field(min_length=1)], ModelPrice] = Field(default_factory=dict)


class Budget(Strict):
    daily_usd: PositiveUsd
    # What a call is assumed to last until its completed status callback says: held against the
    # cap (at voice_minute) from the answer, so concurrent calls cannot all fit under it.
    call_reserve_minutes: Annotated[int, Field(ge=0, le=240, strict=True)] = 5
    refusal: ByKind = Field(default_factory=ByKind)


class Policy(Strict):
    twilio: TwilioAccount
    numbers: list[Number] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    routes: list[Route] = Field(default_factory=list)
    fallback: ByKind = Field(default_factory=ByKind)
    refusal: ByKind = Field(default_factory=ByKind)
    api: Api | None = None
    outbound: Outbound | None = None
    prices: Prices = Field(default_factory=Prices)
    budget: Budget | None = None

    @field_validator("numbers")
    @classmethod
    def _unique_numbers(cls, numbers: list[str]) -> list[str]:
        seen: set[str] = set()
        for number in numbers:
            if number in seen:
                raise ValueError(f"{number} is listed twice")
            seen.add(number)
        return numbers
