"""The tenant's own status callback: what Twilio reports about a call or a text the outbound API
placed comes to the gateway first (a call's final status frees its slot and books its minutes),
then goes on to the URL of the tenant's policy (`outbound.status_callback`, never a URL from a
request), signed anew for that URL with the tenant's auth token, as an `upstream` route's
webhook is: the tenant's runtime checks it with twilio's RequestValidator, unchanged.

It is sent while Twilio waits, so it is part of the status callback's one record (a child span
of its span), and bounded by FORWARD_WITHIN. A failure is logged and marked on the record;
Twilio still gets its 204, since the gateway's own work on the callback is done (and a 5xx
would only make Twilio's debugger report the gateway, not the runtime).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.auth.twilio_signature import SIGNATURE, Params, sign_for
from gateway.egress import Egress
from gateway.errors import UpstreamError
from gateway.exchange import Exchange
from gateway.hop import request_head
from gateway.policy.tenant import Tenant
from gateway.protocol.tracecontext import new_span_id, traceparent

VIA, API = "via", "api"  # the query of the status URL the API gives Twilio: "placed by the API"
FORWARD_WITHIN = 5.0  # s: a runtime takes a status callback in milliseconds
MAX_ANSWER = 64 * 1024  # its answer is read and dropped: Twilio ignores a status callback's body
TENANT_HEADER = "X-Switchyard-Tenant"
STEP = "status.forward"


def status_url(public: str, tenant: Tenant) -> str:
    """The status callback the API gives Twilio for what it places: the gateway's own."""
    return f"{public}/t/{tenant.id}/status?{VIA}={API}"


def wanted(tenant: Tenant, query: Mapping[str, str]) -> bool:
    """Whether this (verified) status callback goes on: about something the API placed, for a
    tenant whose policy names a status callback of its own."""
    outbound = tenant.outbound
    return outbound is not None and outbound.status_target is not None and query.get(VIA) == API


async def forward(
    exchange: Exchange,
    tenant: Tenant,
    params: Params,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    egress: Egress,
) -> int:
    """Send the callback on; the runtime's status, or UpstreamError (a connection that failed
    before anything was sent is tried once more by the egress)."""
    outbound = tenant.outbound
    assert outbound is not None and outbound.status_target is not None and outbound.status_callback is not None
    target, url = outbound.status_target, outbound.status_callback
    sent = dict(headers)  # Twilio's own (I-Twilio-Idempotency-Token …), chosen by the handler
    content_type = content_type or "application/x-www-form-urlencoded"
    sent["Content-Type"] = content_type
    sent[TENANT_HEADER] = tenant.id
    signed, sent[SIGNATURE] = sign_for(url, params, body, content_type, tenant.keys[0])
    span_id = new_span_id()
    trace_id, sampled = exchange.trace()
    sent["traceparent"] = traceparent(trace_id, span_id, sampled)
    head = request_head("POST", target, target.path + signed[len(url) :], sent.items(), len(body))
    clock = exchange.clock
    started = clock()
    attributes: dict[str, str | int] = {"server.address": target.host}
    try:
        answer = await egress.forward(
            target, head, body, name=f"status {tenant.id} {target.host}", deadline=exchange.deadline(),
            cap=FORWARD_WITHIN, max_body=MAX_ANSWER,
        )  # fmt: skip
    except UpstreamError as error:
        attributes["error.type"] = error.reason
        raise
    else:
        attributes["http.response.status_code"] = answer.status
        if answer.status >= 400:
            attributes["error.type"] = str(answer.status)
    finally:
        exchange.timed(STEP, clock() - started, started, span_id, attributes)
    return answer.status
