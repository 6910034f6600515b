"""What every action is made of: its kind (schema + compiler) and its compiled, runnable form."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from gateway.auth.public_url import WEBSOCKET_SCHEMES

if TYPE_CHECKING:
    from gateway.deadline import Deadline
    from gateway.egress import Egress
    from gateway.exchange import Exchange
    from gateway.limits.base import Limiter
    from gateway.limits.budget_failover import FailoverLedger
    from gateway.limits.leases import LeaseStore

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Incoming:
    """What an action that calls out may read of a *verified* request."""

    kind: str
    url: str  # the URL Twilio signed
    params: Mapping[str, list[str]]
    body: bytes
    content_type: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Tools:
    """What an action that calls out may use, opened once per app: the one outbound seam, the
    spend ledger (reserve an estimate, commit the real cost, release on failure), the limiter
    (a route's own bucket), the leases (concurrent slots) and the wall clock (the UTC day spend
    is booked to)."""

    egress: Egress
    ledger: FailoverLedger
    limits: Limiter
    leases: LeaseStore
    wall: Callable[[], float]


class CallOut(Protocol):
    """An action that does I/O, through `tools.egress` only. It answers TwiML bytes before
    `deadline`, or raises (UpstreamError, DeadlineExceeded, anything): the handler then answers
    the route's fallback. It records what it used (timings, steps) in `exchange`."""

    async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Compiled:
    """An action ready to serve: bytes rendered at load (static) or a CallOut, never both."""

    reply: bytes | None = None
    call: CallOut | None = None

    def __post_init__(self) -> None:
        if (self.reply is None) == (self.call is None):
            raise ValueError("an action compiles to exactly one of reply bytes or a call-out")


@dataclass(slots=True)
class CompileContext:
    """What an action needs from outside its own YAML when it compiles."""

    tenant_id: str
    # The first --public-url, when known; None under `switchyard check` without one.
    public_url: str | None = None
    # Under `check`, things that are settled only at serve time are noted, not refused.
    notes: list[str] | None = field(default=None)
    # The process environment: the only place secrets come from (never the YAML).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The tenant's Twilio auth token: what a forwarded request is signed anew with.
    signing_key: bytes | None = field(default=None, repr=False)
    # The route being compiled: its name, and its fallback TwiML (the route's or the tenant's).
    route: str = ""
    fallback: bytes | None = None

    def secret(self, variable: str) -> bytes:
        """The value of the environment variable a policy names (an API key, say).

        Raises ValueError naming the variable when it is unset or empty; `check --ignore-env`
        passes an environment in which every variable is set.
        """
        value = self.env.get(variable)
        if not value:
            raise ValueError(f"environment variable {variable} is not set")
        return value.encode()

    def note(self, message: str) -> bool:
        """Record a note when notes are being collected; False when the caller must refuse."""
        if self.notes is None:
            return False
        self.notes.append(message)
        return True

    def websocket_base(self) -> str | None:
        """wss://host[/prefix] for https://host[/prefix]: where our own endpoints live."""
        if self.public_url is None:
            return None
        parts = urlsplit(self.public_url)
        scheme = WEBSOCKET_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            raise ValueError(f"public URL {self.public_url!r} must be http(s)://host[/prefix]")
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class ActionKind(Generic[M]):
    """One kind of action: its YAML key, the schema of its value, which webhooks it may answer,
    and how it compiles. `compile` raises ValueError with a message for the policy's reader."""

    name: str
    schema: Any  # the pydantic type of the value under `name` in a route
    kinds: frozenset[str]
    compile: Callable[[M, CompileContext], Compiled]
