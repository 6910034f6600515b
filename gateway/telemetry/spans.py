"""The server span of one request, built from its exchange after it ended (DESIGN §2 step 8).

No span is live while a request runs: at the end, the record has its start (the exchange's),
its end, what was decided and what it cost, and this writes them as one OTLP span, plus one
child span per I/O step the request waited for (a Redis round trip). Attribute values come
from the policies and from our own decisions; from the request only its path (bounded, no
query), its method, and SIDs of a SID's shape on a verified request. Never a phone number, a
body, a token: nothing else of the form is read here.

Attributes: OpenTelemetry's HTTP server conventions (`http.request.method`, `http.route`,
`url.path`, `http.response.status_code`, `error.type`), Twilio's SIDs as `twilio.call_sid` /
`twilio.message_sid`, and our own namespace `switchyard.*` (OpenTelemetry has no standard cost
attribute: `switchyard.cost.usd` and its parts `switchyard.cost.<part>_usd`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from gateway.exchange import AttributeValue, Exchange
from gateway.protocol.tracecontext import new_span_id, new_trace_id, parse_traceparent
from gateway.telemetry import otlp
from gateway.telemetry.cost import MICRO
from gateway.telemetry.tracing import Sampler

MAX_PATH = 200
SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")
# Decisions that mean the caller did not get what the route says: the span's status is Error.
FAILED = frozenset({"error", "fallback"})
# I/O steps → span names (the step's name when not listed).
STEP_NAMES = {
    "limits": "limits acquire",
    "upstream": "POST upstream",
    "budget.reserve": "budget reserve",
    "budget.charge": "budget charge",
    "budget.release": "budget release",
}
WEBHOOKS = frozenset({"voice", "sms", "status"})


class SpanBuilder:
    """Turns ended exchanges into encoded OTLP spans, sampled by the configured sampler."""

    def __init__(self, sampler: Sampler, store: str = "memory") -> None:
        self._sampler = sampler
        # Child spans around a shared store's round trip name the database (db.system.name).
        self._step_attributes = otlp.attribute("db.system.name", "redis") if store.startswith("redis") else b""

    def build(
        self, end: float, method: str, raw_path: str, status: int, seconds: float, exchange: Exchange
    ) -> list[bytes]:
        """The request's spans (server span first), or [] when the sampler drops its trace.

        end: wall-clock seconds when the request ended; seconds: how long it took.
        """
        parent = parse_traceparent(exchange.traceparent, exchange.tracestate) if exchange.traceparent else None
        # A call out may have fixed the ids already (and sent them on): keep them.
        trace_id = exchange.trace_id or (parent.trace_id if parent is not None else new_trace_id())
        if not self._sampler.sampled(trace_id, parent):
            return []
        end_ns = int(end * 1e9)
        start_ns = end_ns - int(seconds * 1e9)
        span_id = exchange.span_id or new_span_id()
        kind = exchange.kind
        path = raw_path.partition("?")[0][:MAX_PATH]
        name, route = _names(kind, method, path)
        if not exchange.verified and kind != "api":
            # An unverified webhook's path is anyone's text (/t/%2B15551230001/voice is a number):
            # its http.route says enough.
            path = ""
        tenant = exchange.tenant
        attributes = _common(
            method, route, path, status, kind, tenant.id if tenant is not None else "",
            exchange.route or "", exchange.action or "", exchange.decision or "",
        )  # fmt: skip
        parts = [attributes]
        limit = exchange.limit
        if limit is not None:
            parts.append(otlp.cached_attribute("switchyard.limit.bucket", limit.rule.name))
            parts.append(otlp.cached_attribute("switchyard.limit.remaining", limit.remaining))
        if exchange.retry:
            parts.append(otlp.cached_attribute("switchyard.retry", exchange.retry))
        if exchange.error:
            parts.append(otlp.cached_attribute("error.type", exchange.error))
        if exchange.verified:
            parts.append(_sid(exchange.sid))
        if exchange.cost:
            parts.append(_cost(exchange.cost))
        if exchange.attributes:
            parts.append(_attributes(exchange.attributes))
        decision = exchange.decision
        failed = decision in FAILED or status >= 500
        spans = [
            otlp.span(
                trace_id,
                span_id,
                parent.span_id if parent is not None else None,
                name,
                otlp.SPAN_KIND_SERVER,
                start_ns,
                end_ns,
                b"".join(parts),
                status=otlp.STATUS_ERROR if failed else otlp.STATUS_UNSET,
                status_message=exchange.error or "" if failed else "",
                trace_state=parent.trace_state if parent is not None else "",
            )
        ]
        for step, began, took, step_id, own in exchange.steps or ():
            step_start = start_ns + int((began - exchange.started) * 1e9)
            # A step with attributes of its own (an LLM call) is no store round trip: only those.
            step_attributes = _attributes(own) if own else self._step_attributes
            spans.append(
                otlp.span(
                    trace_id,
                    step_id or new_span_id(),
                    span_id,
                    STEP_NAMES.get(step, step),
                    otlp.SPAN_KIND_CLIENT,
                    step_start,
                    step_start + int(took * 1e9),
                    step_attributes,
                    status=otlp.STATUS_ERROR if own and "error.type" in own else otlp.STATUS_UNSET,
                )
            )
        return spans


@functools.lru_cache(maxsize=256)
def _names(kind: str, method: str, path: str) -> tuple[str, str]:
    """(span name, http.route): `twilio.webhook voice` on `/t/{tenant}/voice`; `twilio.stream` (a
    Media Stream, the span lasting as long as it); `api GET /api/v1/limits`."""
    if kind in WEBHOOKS:
        route = f"/t/{{tenant}}/{kind}" if path.startswith("/t/") else f"/twilio/{kind}"
        return f"twilio.webhook {kind}", route
    if kind == "stream":
        return "twilio.stream", "/t/{tenant}/stream"
    return f"{kind} {method} {path}", path


@functools.lru_cache(maxsize=4096)
def _common(
    method: str, route: str, path: str, status: int, kind: str, tenant: str, name: str, action: str, decision: str
) -> bytes:
    """The attributes many requests share, encoded once: one cache lookup instead of nine."""
    out = [
        otlp.attribute("http.request.method", method),
        otlp.attribute("http.route", route),
        otlp.attribute("http.response.status_code", status),
        otlp.attribute("switchyard.kind", kind),
    ]
    for key, value in (
        ("url.path", path),
        ("switchyard.tenant.id", tenant),
        ("switchyard.route", name),
        ("switchyard.action", action),
        ("switchyard.decision", decision),
    ):
        if value:
            out.append(otlp.attribute(key, value))
    return b"".join(out)


def _sid(sid: str | None) -> bytes:
    """A call's or a message's SID (by its prefix), when it has a SID's shape."""
    if not sid or not SID.fullmatch(sid):
        return b""
    return otlp.attribute("twilio.call_sid" if sid.startswith("CA") else "twilio.message_sid", sid)


def _attributes(attributes: Mapping[str, AttributeValue]) -> bytes:
    return b"".join(otlp.attribute(key, value) for key, value in attributes.items())


def _cost(parts: Mapping[str, int]) -> bytes:
    out = [otlp.attribute("switchyard.cost.usd", sum(parts.values()) / MICRO)]
    out.extend(otlp.attribute(f"switchyard.cost.{part}_usd", micro / MICRO) for part, micro in parts.items())
    return b"".join(out)
