"""What every handler needs, opened once per process in app.py's cleanup_ctx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.actions.base import Tools
from gateway.auth.jwks import MAX_JWKS_BYTES, Fetch, JwksCache
from gateway.auth.public_url import PublicUrl
from gateway.bridge.streams import Streams
from gateway.clock import Clock, Sleep, monotonic
from gateway.deadline import Deadline
from gateway.egress import Egress
from gateway.errors import UpstreamError
from gateway.limits.answers import AnswerStore
from gateway.limits.base import Limiter
from gateway.limits.budget_failover import FailoverLedger
from gateway.limits.leases import LeaseStore
from gateway.outbound.calls import Calls
from gateway.outbound.client import TwilioRest
from gateway.outbound.messages import Messages
from gateway.policy.registry import Registry
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.recorder import Recorder


@dataclass(slots=True)
class Services:
    settings: Settings
    registry: Registry
    public_url: PublicUrl
    limits: Limiter
    ledger: FailoverLedger
    recorder: Recorder
    answers: AnswerStore
    leases: LeaseStore
    idempotent: AnswerStore  # API clients' Idempotency-Key answers (outbound/idempotency.py)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Clock = monotonic
    wall: Callable[[], float] = time.time  # the UTC day a spend belongs to
    egress: Egress | None = None  # None only in tests that build Services by hand
    admin_token: bytes | None = field(default=None, repr=False)  # SWITCHYARD_ADMIN_TOKEN
    sleep: Sleep = asyncio.sleep  # how waits (queues, pacing, retries) wait: tests step the clock
    twilio_api_base: str | None = None  # SWITCHYARD_TWILIO_API_BASE: Twilio's REST API elsewhere
    # Tenants' JWKS for API tokens (auth/jwks.py), fetched through the egress; None without one.
    jwks: JwksCache | None = field(init=False, default=None)
    # Calls placed for tenants (outbound/calls.py); None without an egress session.
    calls: Calls | None = field(init=False, default=None)
    # Texts sent for tenants (outbound/messages.py); None without an egress session.
    messages: Messages | None = field(init=False, default=None)
    # What actions that call out use (actions/base.py Tools); None without an egress session.
    tools: Tools | None = field(init=False, default=None)
    # The Media Streams being relayed (bridge/streams.py).
    streams: Streams = field(init=False)

    def __post_init__(self) -> None:
        self.streams = Streams(self.metrics)
        if self.egress is not None:
            self.tools = Tools(self.egress, self.ledger, self.limits, self.leases, self.wall)
            self.jwks = JwksCache(_jwks_fetch(self.egress, self.clock), self.clock)
            rest = TwilioRest(self.egress, self.clock, self.sleep, self.twilio_api_base)
            self.calls = Calls(rest, self.leases, self.limits, self.ledger, self.clock, self.sleep, self.wall)
            self.messages = Messages(rest, self.limits, self.ledger, self.clock, self.wall)


JWKS_WITHIN = 3.0  # s for a tenant's identity provider to answer with its key set


def _jwks_fetch(egress: Egress, clock: Clock) -> Fetch:
    async def fetch(url: str) -> bytes:
        reply = await egress.request(
            "GET",
            url,
            target="jwks",
            deadline=Deadline.after(JWKS_WITHIN, clock),
            headers={"Accept": "application/json"},
            max_body=MAX_JWKS_BYTES,
        )
        if reply.status != 200:
            raise UpstreamError("jwks", "status", reply.status)
        return reply.body

    return fetch
