"""The exchange: one record per request, filled by its handler and read once at the end.

The access log reads it today; the server span, the metrics and the spend ledger read the same
record, so none of them re-derives anything (mitmproxy's HTTPFlow is the model).

A plain class with class-level defaults rather than a dataclass: a request sets only the fields
it reaches, and the defaults cost nothing until then (this runs on every request, the static
path included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from gateway.clock import Clock
from gateway.deadline import TWILIO_TOTAL, Deadline
from gateway.protocol.tracecontext import new_span_id, new_trace_id, parse_traceparent

if TYPE_CHECKING:
    from gateway.limits.base import Decision
    from gateway.policy.registry import PolicySet
    from gateway.policy.tenant import Tenant
    from gateway.telemetry.recorder import Recorder

Outcome = str
"""What became of the request, for logs and spans:
answered, refused, forged, unknown-tenant, no-route, recorded, fallback, error, unauthorized,
client_closed (the client went away before we could answer), over-budget."""

AttributeValue = str | bool | int | float

Step = tuple[str, float, float, bytes | None, Mapping[str, AttributeValue] | None]
"""One I/O step of a request: (name, monotonic start, seconds, its span id if it was sent on
in a traceparent, its own span attributes or None). Each becomes a child span."""


class Exchange:
    """Everything about one request: the policy snapshot it started with, who it is for, what
    was decided, and what it used. The snapshot is the request's for its whole life: a reload
    in the middle (or a fallback) never makes it read `registry.current` again."""

    # Set by the constructor.
    kind: str
    policies: PolicySet
    clock: Clock
    started: float
    # Filled as the handler learns them; None until then.
    tenant: Tenant | None = None
    decision: Outcome | None = None
    route: str | None = None
    action: str | None = None
    limit: Decision | None = None
    retry: str | None = None
    verified: bool = False
    # Raw request values: the access log shortens, masks or drops them (and only logs them at
    # all when it writes the line, off the handler's path).
    sid: str | None = None
    caller: str | None = None
    called: str | None = None
    error: str | None = None
    # The few form values its cost is worked out from at the end (BILLING_FIELDS: an SMS's
    # segments, a call's final status and minutes), and the TwiML answered. Plain strings, not
    # the parsed form: a dict of str is not tracked by the garbage collector, while the form's
    # lists kept alive until the batch is flushed measured ~15 µs per request of collections.
    fields: dict[str, str] | None = None
    reply: bytes | None = None
    # Its cost in parts (micro-dollars), and what of it the ledger has already (a tenant with a
    # budget is charged before the answer; the rest, and everyone else, at the end in batches).
    cost: dict[str, int] | None = None
    charged: dict[str, int] | None = None
    # What an action that calls out spent (a model's tokens): part of the cost above.
    call_cost: dict[str, int] | None = None
    # Span attributes of its own kind (a stream's meter: frames, bytes, marks, minutes).
    attributes: dict[str, AttributeValue] | None = None
    # I/O step timings in seconds, summed per step (the access log), and each step with its start
    # (the child spans).
    timings: dict[str, float] | None = None
    steps: list[Step] | None = None
    # The W3C trace context it came with (read only when tracing is on), for its span's parent.
    traceparent: str | None = None
    tracestate: str | None = None
    # Its trace and server span ids, fixed early only when a call out carries them (trace()).
    trace_id: bytes | None = None
    span_id: bytes | None = None
    sampled: bool = True
    # Who reads this record at the end (cost, ledger, metrics, spans): the app's. None in tests
    # that build exchanges by hand, and then only the access line is written.
    recorder: Recorder | None = None
    # Twilio's total time for this webhook (TWILIO_TOTAL unless the tenant says otherwise).
    budget: float = TWILIO_TOTAL

    STATUS_CLIENT_CLOSED: ClassVar[int] = 499  # nginx's code for "client closed the request"

    def __init__(self, kind: str, policies: PolicySet, clock: Clock) -> None:
        self.kind = kind
        self.policies = policies
        self.clock = clock
        self.started = clock()

    def deadline(self) -> Deadline:
        """What is left of Twilio's budget, measured from when the request began."""
        return Deadline(self.started + self.budget, self.clock)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def timed(
        self,
        step: str,
        seconds: float,
        start: float | None = None,
        span_id: bytes | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """Record how long one I/O step took (a Redis round trip, an upstream call), and when it
        began (the clock's time), which makes it a child span (with `span_id` when the step
        sent it on in a traceparent, and `attributes` of its own: an LLM call's GenAI ones;
        an `error.type` among them marks the span failed)."""
        if self.timings is None:
            self.timings = {}
            self.steps = []
        self.timings[step] = self.timings.get(step, 0.0) + seconds
        if start is not None:
            assert self.steps is not None
            self.steps.append((step, start, seconds, span_id, attributes))

    def trace(self) -> tuple[bytes, bool]:
        """The trace this request belongs to, and whether it is sampled, for a call out that
        carries it on: the caller's (its traceparent), else a new one. Fixes the server span's id
        too, so what the call out sends and the span exported at the end agree."""
        if self.trace_id is None:
            parent = parse_traceparent(self.traceparent, self.tracestate) if self.traceparent else None
            self.trace_id = parent.trace_id if parent is not None else new_trace_id()
            self.span_id = new_span_id()
            self.sampled = parent.sampled if parent is not None else True
        return self.trace_id, self.sampled

    @property
    def tenant_id(self) -> str | None:
        return None if self.tenant is None else self.tenant.id
