"""The runtime form of one tenant's policy: everything a request needs, computed at load."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.hop import Target
from gateway.limits.base import FailureMode, Rule
from gateway.protocol import twiml
from gateway.telemetry.cost import Prices

if TYPE_CHECKING:
    from gateway.actions.base import CallOut

Kind = Literal["voice", "sms", "status", "api", "llm"]
"""What charges a tenant's buckets: a request of that kind, or ("llm") a call of an llm action."""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with its regexes compiled and its action compiled: `reply` holds the bytes of a
    static action (rendered at load), `call` the action that calls out; exactly one is set."""

    name: str
    kind: Literal["voice", "sms"]
    action: str
    reply: bytes | None
    fallback: bytes
    call: CallOut | None = None
    to: frozenset[str] | None = None
    from_: re.Pattern[str] | None = None
    body: re.Pattern[str] | None = None

    def matches(self, params: Mapping[str, list[str]]) -> bool:
        if self.to is not None and _first(params, "To") not in self.to:
            return False
        if self.from_ is not None and not self.from_.search(_first(params, "From")):
            return False
        return self.body is None or bool(self.body.search(_first(params, "Body")))


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key API tokens are verified with: an HS256 secret, or an RS256/ES256 public key (a
    `cryptography` key object), its algorithm pinned."""

    kid: str | None
    algorithm: str
    key: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiAuth:
    keys: tuple[ApiKey, ...]
    audience: str
    issuer: str | None
    jwks_url: str | None = None
    jwks_refresh: float = 300.0
    require_scopes: bool = False


@dataclass(frozen=True, slots=True)
class OutboundCalls:
    cps: float
    to_allow: tuple[str, ...]
    to_deny: tuple[str, ...]
    urls: frozenset[str]
    allow_twiml: bool
    queue_max: int
    queue_timeout: float
    ring_timeout: int
    time_limit: int
    # The tenant's own status callback (its URL, and parsed for the hop), and the call events
    # asked of Twilio; `completed` always among them.
    status_callback: str | None = None
    status_target: Target | None = None
    status_events: tuple[str, ...] = ("completed",)


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant, ready to serve. Secrets are excluded from repr so they never reach a log."""

    id: str
    file: str
    account_sid: str
    keys: tuple[bytes, ...] = field(repr=False)
    numbers: frozenset[str]
    rules: Mapping[Kind, tuple[Rule, ...]]
    routes: tuple[CompiledRoute, ...]
    fallback: Mapping[Literal["voice", "sms"], bytes]
    refusal: Mapping[Literal["voice", "sms"], bytes]
    on_store_failure: FailureMode = "local"
    concurrent_calls: int | None = None
    concurrent_streams: int | None = None
    api: ApiAuth | None = None
    outbound: OutboundCalls | None = None  # None: the tenant places no calls through the API
    prices: Prices = field(default_factory=Prices)  # µ$; all 0 (free) unless the policy prices something
    daily_budget: int | None = None  # µ$ per UTC day; None: no cap
    webhook_timeout: float = 15.0  # seconds: Twilio's total time (twilio.webhook_timeout_ms)
    call_reserve: int = 0  # µ$ held per answered call until its final status (budget.call_reserve_minutes)
    # Answered once the day's budget is spent: by default the call is left unanswered (so
    # unbilled) and the SMS gets no reply, which is what stops the spending.
    budget_refusal: Mapping[Literal["voice", "sms"], bytes] = field(
        default_factory=lambda: {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}
    )
    # The policy reads other files (a PEM key): its bytes alone do not say whether it changed,
    # so SIGHUP compiles it again even when they are the same.
    names_files: bool = False

    def route(self, kind: str, params: Mapping[str, list[str]]) -> CompiledRoute | None:
        """The first route for `kind` whose match fits the request, or None (the fallback)."""
        for candidate in self.routes:
            if candidate.kind == kind and candidate.matches(params):
                return candidate
        return None
