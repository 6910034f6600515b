"""One bridged stream's life, after its upgrade was verified: wait for `start`, check it was
admitted (the token from our webhook answer) and claim its slot, connect to the runtime, relay,
close both sides with a fitting code, give the slot back, and book its minutes.

What happened goes on the request's exchange (decision, error, cost, the meter as span
attributes), read once at the end like every other request's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import WSCloseCode

from gateway.actions.stream import CLAIM_TTL, STREAMS, UNLIMITED, StreamAdmission, hold_of
from gateway.actions.upstream import TENANT_HEADER
from gateway.auth import admission
from gateway.auth.twilio_signature import SIGNATURE, compute
from gateway.bridge.handshake import dial
from gateway.bridge.relay import Reason, Relay
from gateway.bridge.side import Side
from gateway.bridge.streams import Stopped, Stream
from gateway.clock import Clock
from gateway.errors import BackendError, UpstreamError
from gateway.exchange import AttributeValue, Exchange
from gateway.limits.budget import Reservation
from gateway.limits.leases import Lease
from gateway.policy.tenant import Tenant
from gateway.protocol.media import MAX_MESSAGE, START_WITHIN, Inbound, MediaError, Meter, StreamSession
from gateway.protocol.tracecontext import new_span_id, traceparent
from gateway.services import Services
from gateway.telemetry import cost
from gateway.telemetry.usage import STREAM_SID

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
    "twilio_silent": (WSCloseCode.INTERNAL_ERROR, WSCloseCode.OK),
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


async def bridge(twilio: Side, exchange: Exchange, tenant: Tenant, services: Services) -> None:
    """Run one stream on an upgraded (and verified) Twilio socket, to its end."""
    stream = services.streams.open(tenant.id)
    try:
        await _bridge(twilio, exchange, tenant, services, stream)
    finally:
        services.streams.close(stream)


async def _bridge(twilio: Side, exchange: Exchange, tenant: Tenant, services: Services, stream: Stream) -> None:
    clock = services.clock
    opened = clock()
    session = StreamSession(opened, extra_parameters={"tenant": tenant.id}, drop_parameters=(admission.PARAMETER,))
    early: list[str] = []
    try:
        begun = await stream.until(asyncio.wait_for(_until_start(twilio, session, clock, early), START_WITHIN))
    except TimeoutError:
        await _refuse(twilio, exchange, tenant, services, Ended("no-start", WSCloseCode.POLICY_VIOLATION, "no_start"))
        return
    except Stopped as stopped:
        await _refuse(twilio, exchange, tenant, services, _stopped(stopped))
        return
    if begun is None:
        await _refuse(twilio, exchange, tenant, services, Ended("client_closed", WSCloseCode.OK, "twilio_closed"))
        return
    start = begun.start
    assert start is not None
    exchange.sid = start.call_sid
    exchange.fields = {STREAM_SID: start.stream_sid}
    admitted = admission.check(
        tenant.keys, tenant.id, start.call_sid, start.custom_parameters.get(admission.PARAMETER, ""), services.wall()
    )
    if admitted is None:
        log.warning("tenant %s: a stream whose start this gateway did not admit; closed", tenant.id)
        await _refuse(
            twilio, exchange, tenant, services, Ended("not-admitted", WSCloseCode.POLICY_VIOLATION, "not_admitted")
        )
        return
    lease = await _claim(services, tenant, start.call_sid, admitted.nonce)
    if lease is None:
        # Claimed already (a replayed `start`, a second socket for the same admission), or its
        # slot lapsed with none free: the slot and the hold are another stream's, or gone.
        log.warning("tenant %s: a stream's admission was claimed already, or its slot lapsed; closed", tenant.id)
        await _refuse(twilio, exchange, tenant, services, Ended("refused", WSCloseCode.POLICY_VIOLATION, "claimed"))
        return
    held = hold_of(tenant.id, admitted, start.call_sid)
    route = next((r for r in tenant.routes if r.name == admitted.route and isinstance(r.call, StreamAdmission)), None)
    if route is None:  # the policy was changed since the call was answered
        await _let_go(services, tenant, lease, held)
        await _refuse(twilio, exchange, tenant, services, Ended("no-route", WSCloseCode.INTERNAL_ERROR, "no_route"))
        return
    assert isinstance(route.call, StreamAdmission)
    config = route.call.bridged
    exchange.route, exchange.action = route.name, "stream"

    # Whichever way the stream ends, its slot is given back before Twilio's socket is closed:
    # Twilio goes on to the verbs after </Connect> once it sees the close, and the webhook that
    # may bring (a <Redirect>, the caller's next call) must find the slot free, not wait for our
    # closing handshakes with both sides.
    slot = _Slot(services, tenant, lease, held)
    reason: Reason | str = "runtime_failed"
    try:
        try:
            runtime = await stream.until(_connect(exchange, tenant, services, config.upstream))
        except Stopped as stopped:
            reason = stopped.reason
            await slot.give_back()
            await _refuse(twilio, exchange, tenant, services, _stopped(stopped), count=False)
            return
        if runtime is None:
            exchange.decision = "fallback"
            reason = "runtime_unreachable"
            await slot.give_back()
            await _close(twilio, WSCloseCode.INTERNAL_ERROR)
            return
        relay = Relay(twilio, runtime, session, clock, services.metrics)
        stream.relaying(relay)
        try:
            for text in (*early, begun.forward):
                runtime.send_text(text)
            reason = await relay.run(opened + config.max_duration)
        finally:
            to_twilio, to_runtime = CLOSE_CODES.get(reason, (WSCloseCode.INTERNAL_ERROR,) * 2)  # type: ignore[arg-type]
            await slot.give_back()
            await asyncio.gather(_close(runtime, to_runtime), _close(twilio, to_twilio))
        exchange.decision = "streamed"
        if reason not in ("stop", "twilio_closed", "runtime_closed"):
            exchange.error = str(reason)
    finally:
        await slot.give_back()  # (done already, unless something raised before a close)
        await _book(exchange, tenant, services, session.meter(), held)
        services.metrics.stream_ends.labels(tenant.id, str(reason)).inc()


class _Slot:
    """A relayed stream's slot: kept alive (renewed, its budget hold extended) from the claim
    until `give_back`, which ends the beats and releases the lease, once."""

    __slots__ = ("_done", "_keep", "_lease", "_services")

    def __init__(self, services: Services, tenant: Tenant, lease: Lease, held: Reservation | None) -> None:
        self._services = services
        self._lease: Lease | None = lease
        self._done = asyncio.Event()
        self._keep = asyncio.create_task(_keep_alive(services, tenant, lease, held, self._done))

    async def give_back(self) -> None:
        if self._lease is None:
            return
        # Ended, not cancelled, and awaited before the slot is given back: a renewal already
        # sent to the store and landing after the release would take the slot again.
        self._done.set()
        await asyncio.gather(self._keep, return_exceptions=True)
        lease, self._lease = self._lease, None
        if lease is not None:
            await _give_back(self._services, lease)


def _stopped(stopped: Stopped) -> Ended:
    """A stream stopped before its relay began: closed as a relay stopped for that reason is."""
    return Ended(stopped.reason, CLOSE_CODES[stopped.reason][0], stopped.reason)


async def _until_start(twilio: Side, session: StreamSession, clock: Clock, early: list[str]) -> Inbound | None:
    """Read until `start` (kept: `connected`); None if Twilio closed first."""
    while (text := await twilio.receive()) is not None:
        try:
            inbound = session.from_twilio(text, clock())
        except MediaError:
            continue
        if inbound.event == "start":
            return inbound
        early.append(inbound.forward)
    return None


async def _close(side: Side, code: int) -> None:
    """Close with `code`, waiting at most CLOSE_WITHIN for the peer's close frame: a side that
    reads nothing cannot even take ours, and is then cut."""
    await side.close(code, CLOSE_WITHIN)


async def _claim(services: Services, tenant: Tenant, call_sid: str, nonce: str) -> Lease | None:
    """Take the slot the webhook's answer reserved for the call, as the stream's own lease
    (named by the admission's nonce), once: None if this admission was claimed already."""
    limit = tenant.concurrent_streams if tenant.concurrent_streams is not None else UNLIMITED
    ttl = services.settings.stream_lease_ttl
    pending = Lease(tenant.id, STREAMS, call_sid, limit, CLAIM_TTL)
    try:
        return await services.leases.claim(pending, nonce, ttl, CLAIM_TTL)
    except BackendError as error:
        if tenant.concurrent_streams is not None and tenant.on_store_failure == "closed":
            log.warning("tenant %s: a stream's slot could not be claimed: %s", tenant.id, error)
            return None
        # Relayed on trust in the token (a replay within its minute is not caught meanwhile);
        # the heartbeats take the slot once the store answers.
        log.warning("tenant %s: a stream relayed without its slot claimed, the store failing: %s", tenant.id, error)
        return Lease(tenant.id, STREAMS, nonce, limit, ttl)


async def _keep_alive(
    services: Services, tenant: Tenant, lease: Lease, held: Reservation | None, done: asyncio.Event
) -> None:
    """Until `done`: the stream's slot renewed and its budget hold extended every ttl/3 (the
    hold from the first beat on: until the claim it lived only as long as a claim may take).
    Both lapse within the ttl of this instance dying. A failed beat is logged, and tried again;
    a beat in flight finishes before this returns."""
    ttl = lease.ttl
    while True:
        if held is not None:
            try:
                if not await services.ledger.extend(held, ttl):
                    log.info("tenant %s: a stream's budget hold had gone; its minutes are booked anyway", tenant.id)
                    held = None
            except BackendError as error:
                log.warning("tenant %s: a stream's budget hold not extended: %s", tenant.id, error)
        # Three beats per TTL: a lease survives two lost heartbeats in a row.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), ttl / 3)
        if done.is_set():
            return
        try:
            if not await services.leases.renew(lease):
                log.warning("tenant %s: a stream's slot was lost: over the limit", tenant.id)
        except BackendError as error:
            log.warning("tenant %s: a stream's slot not renewed: %s", tenant.id, error)


async def _let_go(services: Services, tenant: Tenant, lease: Lease, held: Reservation | None) -> None:
    """A stream admitted but not relayed: its slot and its budget estimate go now, not at their TTL."""
    await _give_back(services, lease)
    if held is not None:
        try:
            await services.ledger.release(held)
        except BackendError as error:
            log.warning("tenant %s: a stream's hold not released: %s", tenant.id, error)


async def _give_back(services: Services, lease: Lease) -> None:
    try:
        await services.leases.release(lease)
    except BackendError as error:  # the slot comes back at its TTL: that is what it is for
        log.warning("tenant %s: a stream's slot not given back: %s", lease.tenant, error)


async def _connect(exchange: Exchange, tenant: Tenant, services: Services, url: str) -> Side | None:
    """The runtime's WebSocket (the URL from the policy), signed anew for it; None if it failed."""
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
        return await dial(url, headers, name=f"stream {tenant.id}", within=CONNECT_WITHIN, max_size=MAX_MESSAGE)
    except UpstreamError as error:
        exchange.error = f"runtime {error.reason}"
        log.warning("tenant %s: the stream's runtime could not be reached: %s", tenant.id, error)
        return None
    finally:
        exchange.timed("stream.connect", clock() - started, started, span_id)


async def _refuse(
    twilio: Side,
    exchange: Exchange,
    tenant: Tenant,
    services: Services,
    ended: Ended,
    *,
    count: bool = True,
) -> None:
    exchange.decision = ended.decision
    exchange.error = ended.reason
    if count:
        services.metrics.stream_ends.labels(tenant.id, ended.reason).inc()
    await _close(twilio, ended.code)


async def _book(exchange: Exchange, tenant: Tenant, services: Services, meter: Meter, held: Reservation | None) -> None:
    """The stream's minutes: committed against its budget hold (as the admission made it), or
    booked at the end (once per stream); its meter on the span."""
    spent = cost.stream_cost(tenant.prices, meter.seconds) if meter.started_at is not None else {}
    exchange.call_cost = spent
    exchange.attributes = _meter_attributes(meter)
    if held is not None:
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
