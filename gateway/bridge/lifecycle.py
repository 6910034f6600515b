"""One bridged stream's life, after its upgrade was verified: wait for `start`, check it was
admitted (the token from our webhook answer) and claim its slot, connect to the runtime, relay,
close both sides with a fitting code, give the slot back, and book its minutes.

What happened goes on the request's exchange (decision, error, cost, the meter as span
attributes), read once at the end like every other request's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.actions.stream import STREAMS, StreamAdmission, hold_of, stream_holds
from gateway.actions.upstream import SIGNATURE, TENANT_HEADER
from gateway.auth import admission
from gateway.auth.twilio_signature import compute
from gateway.bridge.relay import Reason, Relay
from gateway.clock import Clock
from gateway.errors import BackendError, UpstreamError
from gateway.exchange import AttributeValue, Exchange
from gateway.limits.budget import utc_day
from gateway.limits.leases import Lease, heartbeat
from gateway.policy.tenant import Tenant
from gateway.protocol.media import MAX_MESSAGE, START_WITHIN, Inbound, MediaError, Meter, StreamSession
from gateway.services import Services
from gateway.telemetry import cost
from gateway.telemetry.tracing import new_span_id, traceparent

log = logging.getLogger(__name__)

CONNECT_WITHIN = 5.0  # s to open the runtime's WebSocket
CLOSE_WITHIN = 2.0  # s for a side to take our close frame

# How each end closes each side: (Twilio's socket, the runtime's). Twilio goes on to the verbs
# after </Connect> (the fallback) whatever the code; 1001 says the gateway is going away.
CLOSE_CODES: dict[Reason, tuple[int, int]] = {
    "stop": (WSCloseCode.OK, WSCloseCode.OK),
    "twilio_closed": (WSCloseCode.OK, WSCloseCode.OK),
    "runtime_closed": (WSCloseCode.OK, WSCloseCode.OK),
    "runtime_failed": (WSCloseCode.INTERNAL_ERROR, WSCloseCode.INTERNAL_ERROR),
    "max_duration": (WSCloseCode.OK, WSCloseCode.OK),
    "stalled": (WSCloseCode.INTERNAL_ERROR, WSCloseCode.INTERNAL_ERROR),
    "shutdown": (WSCloseCode.GOING_AWAY, WSCloseCode.GOING_AWAY),
}


@dataclass(slots=True)
class Ended:
    """Why a stream ended before it was relayed (decision, close code, log reason)."""

    decision: str
    code: int
    reason: str


async def bridge(twilio: web.WebSocketResponse, exchange: Exchange, tenant: Tenant, services: Services) -> None:
    """Run one stream on an upgraded (and verified) Twilio socket, to its end."""
    clock = services.clock
    opened = clock()
    session = StreamSession(opened, extra_parameters={"tenant": tenant.id}, drop_parameters=(admission.PARAMETER,))
    early: list[str] = []
    try:
        async with asyncio.timeout(START_WITHIN):
            begun = await _until_start(twilio, session, clock, early)
    except TimeoutError:
        await _refuse(twilio, exchange, tenant, services, Ended("no-start", WSCloseCode.POLICY_VIOLATION, "no_start"))
        return
    if begun is None:
        await _refuse(twilio, exchange, tenant, services, Ended("client_closed", WSCloseCode.OK, "twilio_closed"))
        return
    start = begun.start
    assert start is not None
    exchange.sid = start.call_sid
    admitted = admission.check(
        tenant.keys, tenant.id, start.call_sid, start.custom_parameters.get(admission.PARAMETER, ""), services.wall()
    )
    if admitted is None:
        log.warning("tenant %s: a stream whose start this gateway did not admit; closed", tenant.id)
        await _refuse(
            twilio, exchange, tenant, services, Ended("not-admitted", WSCloseCode.POLICY_VIOLATION, "not_admitted")
        )
        return
    route = next((r for r in tenant.routes if r.name == admitted.route and isinstance(r.call, StreamAdmission)), None)
    if route is None:  # the policy was changed since the call was answered
        await _refuse(twilio, exchange, tenant, services, Ended("no-route", WSCloseCode.INTERNAL_ERROR, "no_route"))
        await _release_holds(services, tenant, start.call_sid)
        if admitted.lease and tenant.concurrent_streams is not None:
            await _give_back(services, Lease(tenant.id, STREAMS, admitted.lease, tenant.concurrent_streams, 1.0))
        return
    assert isinstance(route.call, StreamAdmission)
    config = route.call.bridged
    exchange.route, exchange.action = route.name, "stream"

    lease: Lease | None = None
    if admitted.lease and tenant.concurrent_streams is not None:
        ttl = services.settings.stream_lease_ttl
        lease = Lease(tenant.id, STREAMS, admitted.lease, tenant.concurrent_streams, ttl)
        if not await _claim(services, tenant, lease):
            await _refuse(
                twilio, exchange, tenant, services, Ended("refused", WSCloseCode.POLICY_VIOLATION, "over_limit")
            )
            await _release_holds(services, tenant, exchange.sid or "")
            return
    beats = asyncio.create_task(heartbeat(services.leases, lease)) if lease is not None else None
    reason: Reason | str = "runtime_failed"
    try:
        runtime = await _connect(exchange, tenant, services, config.upstream)
        if runtime is None:
            exchange.decision = "fallback"
            await _close(twilio, WSCloseCode.INTERNAL_ERROR)
            reason = "runtime_unreachable"
            return
        relay = Relay(twilio, runtime, session, clock, services.metrics)
        services.streams.opened(tenant.id, relay)
        try:
            for text in (*early, begun.forward):
                await runtime.send_str(text)
            reason = await relay.run(opened + config.max_duration)
        except (ConnectionError, RuntimeError):  # the runtime went away while we sent the start
            reason = "runtime_failed"
        finally:
            services.streams.closed(relay)
            to_twilio, to_runtime = CLOSE_CODES.get(reason, (WSCloseCode.INTERNAL_ERROR,) * 2)  # type: ignore[arg-type]
            await asyncio.gather(_close(runtime, to_runtime), _close(twilio, to_twilio))
        exchange.decision = "streamed"
        if reason not in ("stop", "twilio_closed", "runtime_closed"):
            exchange.error = str(reason)
    finally:
        if beats is not None:
            beats.cancel()
        if lease is not None:
            await _give_back(services, lease)
        await _book(exchange, tenant, services, session.meter(), admitted, config.reserve_minutes)
        services.metrics.stream_ends.labels(tenant.id, str(reason)).inc()


async def _until_start(
    twilio: web.WebSocketResponse, session: StreamSession, clock: Clock, early: list[str]
) -> Inbound | None:
    """Read until `start` (kept: `connected`); None if Twilio closed first."""
    async for message in twilio:
        if message.type is not WSMsgType.TEXT:
            continue
        try:
            inbound = session.from_twilio(message.data, clock())
        except MediaError:
            continue
        if inbound.event == "start":
            return inbound
        early.append(inbound.forward)
    return None


async def _close(socket: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, code: int) -> None:
    """Close with `code`, waiting at most CLOSE_WITHIN: a side that reads nothing cannot even
    take our close frame (aiohttp's close waits for the send), and is then cut (a cancelled
    close drops the connection)."""
    try:
        async with asyncio.timeout(CLOSE_WITHIN):
            await socket.close(code=code)
    except TimeoutError:
        log.info("a stream socket did not take its close frame within %.1fs: cut", CLOSE_WITHIN)


async def _claim(services: Services, tenant: Tenant, lease: Lease) -> bool:
    """Take the slot the webhook's answer reserved, for as long as the stream is open."""
    try:
        return await services.leases.renew(lease)
    except BackendError as error:
        log.warning("tenant %s: a stream's slot could not be claimed: %s", tenant.id, error)
        return tenant.on_store_failure != "closed"


async def _release_holds(services: Services, tenant: Tenant, call_sid: str) -> None:
    """A stream admitted but not relayed: its budget estimate is let go now, not at its TTL."""
    try:
        for held in stream_holds(tenant, utc_day(services.wall()), call_sid):
            await services.ledger.release(held)
    except BackendError as error:
        log.warning("tenant %s: a stream's hold not released: %s", tenant.id, error)


async def _give_back(services: Services, lease: Lease) -> None:
    try:
        await services.leases.release(lease)
    except BackendError as error:  # the slot comes back at its TTL: that is what it is for
        log.warning("tenant %s: a stream's slot not given back: %s", lease.tenant, error)


async def _connect(
    exchange: Exchange, tenant: Tenant, services: Services, url: str
) -> aiohttp.ClientWebSocketResponse | None:
    """The runtime's WebSocket (the URL from the policy), signed anew for it; None if it failed."""
    assert services.egress is not None, "the app's outbound session is open while serving"
    trace_id, sampled = exchange.trace()
    span_id = new_span_id()
    headers = {
        TENANT_HEADER: tenant.id,
        "traceparent": traceparent(trace_id, span_id, sampled),
        # What Twilio would sign for this URL: a runtime checking it with RequestValidator works.
        SIGNATURE: compute(url, None, tenant.keys[0]) if tenant.keys else "",
    }
    clock = services.clock
    started = clock()
    try:
        return await services.egress.websocket(
            url, name=f"stream {tenant.id}", headers=headers, within=CONNECT_WITHIN, max_msg_size=MAX_MESSAGE
        )
    except UpstreamError as error:
        exchange.error = f"runtime {error.reason}"
        log.warning("tenant %s: the stream's runtime could not be reached: %s", tenant.id, error)
        return None
    finally:
        exchange.timed("stream.connect", clock() - started, started, span_id)


async def _refuse(
    twilio: web.WebSocketResponse, exchange: Exchange, tenant: Tenant, services: Services, ended: Ended
) -> None:
    exchange.decision = ended.decision
    exchange.error = ended.reason
    services.metrics.stream_ends.labels(tenant.id, ended.reason).inc()
    await _close(twilio, ended.code)


async def _book(
    exchange: Exchange, tenant: Tenant, services: Services, meter: Meter, admitted: admission.Admission, reserve: int
) -> None:
    """The stream's minutes: committed against its budget hold, or booked at the end (once per
    call); its meter on the span."""
    spent = cost.stream_cost(tenant.prices, meter.seconds) if meter.started_at is not None else {}
    exchange.call_cost = spent
    exchange.attributes = _meter_attributes(meter)
    call_sid = exchange.sid or ""
    price = tenant.prices.stream_minute
    if tenant.daily_budget is not None and price:
        held = hold_of(tenant.id, admitted, call_sid, reserve * price)
        try:
            await services.ledger.commit(held, spent)
        except BackendError as error:
            log.warning("tenant %s: a stream's minutes not committed: %s", tenant.id, error)
            return
        exchange.charged = spent


def _meter_attributes(meter: Meter) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "switchyard.stream.seconds": round(meter.seconds, 3),
        "switchyard.stream.frames.in": meter.inbound_frames,
        "switchyard.stream.frames.out": meter.outbound_frames,
        "switchyard.stream.bytes.in": meter.inbound_bytes,
        "switchyard.stream.bytes.out": meter.outbound_bytes,
        "switchyard.stream.marks.sent": meter.marks_sent,
        "switchyard.stream.marks.echoed": meter.marks_echoed,
        "switchyard.stream.dtmf": meter.dtmf,
    }
    round_trip = meter.mark_round_trip
    if round_trip.p50 is not None:
        attributes["switchyard.stream.mark_round_trip_ms.p50"] = round(round_trip.p50 * 1000, 1)
    barge_in = meter.barge_in
    if barge_in.p50 is not None:
        attributes["switchyard.stream.barge_in_ms.p50"] = round(barge_in.p50 * 1000, 1)
    return attributes
