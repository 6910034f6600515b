"""The JSON API for tenants' own clients (JWT): read your limits (charged to the `api` bucket) and
your spend; and the operators' view of every tenant's spend (an admin token)."""

from __future__ import annotations

import asyncio
import datetime
import hmac
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway import responses
from gateway.auth import jwt
from gateway.auth.jwks import JwksUnavailable
from gateway.auth.jwt import Grant
from gateway.errors import BackendError, Refused, ScopeError, SignatureError
from gateway.exchange import Exchange
from gateway.keys import EXCHANGE, SERVICES
from gateway.limits.base import Decision
from gateway.limits.budget import utc_day
from gateway.outbound import calls as outbound_calls
from gateway.outbound import idempotency
from gateway.outbound import messages as outbound_messages
from gateway.outbound.calls import CallRefused
from gateway.outbound.status import status_url
from gateway.policy.tenant import Tenant
from gateway.services import Services
from gateway.telemetry.cost import PARTS, to_usd


async def limits(request: web.Request) -> web.Response:
    """GET /api/v1/limits: the tenant's configured buckets, with RateLimit headers."""
    services = request.app[SERVICES]
    exchange = _exchange(request, services)
    grant = await _grant(request, exchange, services, scope=None)
    if isinstance(grant, web.Response):
        return grant
    tenant = grant.tenant
    decision = await _charge(services, exchange, tenant)
    if decision is not None and not decision.allowed:
        return responses.too_many(Refused(decision))
    exchange.decision = "answered"
    body = {
        "tenant": tenant.id,
        "limits": {
            kind: [{"name": r.name, "rate": r.rate, "per_seconds": r.per, "burst": r.burst} for r in rules_]
            for kind, rules_ in tenant.rules.items()
        },
        "concurrent_calls": tenant.concurrent_calls,
        "concurrent_streams": tenant.concurrent_streams,
        "store_degraded": services.limits.degraded,
    }
    return responses.with_limits(responses.json(body), decision)


async def cost(request: web.Request) -> web.Response:
    """GET /api/v1/cost?day=YYYY-MM-DD: the tenant's spend of one UTC day (today by default),
    in parts, with its budget; for the tenant of the bearer token."""
    services = request.app[SERVICES]
    exchange = _exchange(request, services)
    grant = await _grant(request, exchange, services, scope="cost:read")
    if isinstance(grant, web.Response):
        return grant
    tenant = grant.tenant
    decision = await _charge(services, exchange, tenant)  # a ledger read each: the `api` bucket
    if decision is not None and not decision.allowed:
        return responses.too_many(Refused(decision))
    day = _day(request, services.wall())
    if day is None:
        exchange.decision = "bad-request"
        return responses.problem(400, "Bad day", "day must be a date in the form YYYY-MM-DD")
    try:
        report = await _report(services, tenant, day)
    except BackendError:
        exchange.decision = "error"
        return responses.problem(503, "Spend ledger unavailable", "the shared store is not answering; try again")
    exchange.decision = "answered"
    return responses.with_limits(responses.json(report), decision)


async def admin_cost(request: web.Request) -> web.Response:
    """GET /api/v1/admin/cost?day=YYYY-MM-DD: every tenant's spend of one day, for operators
    (the bearer token is SWITCHYARD_ADMIN_TOKEN from the environment; without it, no access)."""
    services = request.app[SERVICES]
    exchange = _exchange(request, services)
    expected = services.admin_token
    try:
        given = jwt.bearer(request.headers.get("Authorization")).encode()
    except SignatureError:
        given = b""
    if expected is None or not given or not hmac.compare_digest(given, expected):
        exchange.decision = "unauthorized"
        return responses.unauthorized("invalid token" if _bearer_sent(request) else None)
    day = _day(request, services.wall())
    if day is None:
        exchange.decision = "bad-request"
        return responses.problem(400, "Bad day", "day must be a date in the form YYYY-MM-DD")
    try:
        tenants = [await _report(services, t, day) for t in exchange.policies.tenants.values()]
    except BackendError:
        exchange.decision = "error"
        return responses.problem(503, "Spend ledger unavailable", "the shared store is not answering; try again")
    exchange.decision = "answered"
    total = sum(t["spent_usd"] for t in tenants)  # type: ignore[misc]
    return responses.json({"day": day, "currency": "USD", "spent_usd": round(total, 6), "tenants": tenants})


MAX_CALL_BODY = 16 * 1024
# How long an outbound POST's body may take to arrive, all of it, once its head has.
BODY_TIMEOUT = 5.0
# The client went away before (or while) its body arrived: aiohttp raises these from the read.
CLIENT_GONE = (ClientConnectionResetError, ConnectionResetError)
# A body the parser refused (a broken chunk, an encoding that does not decode).
MALFORMED = (RequestPayloadError, HttpProcessingError)


Work = Callable[[Services, Exchange, Tenant, bytes], Awaitable[web.Response]]


async def calls(request: web.Request) -> web.Response:
    """POST /api/v1/calls: place a call for the token's tenant (scope calls:write): 201 with its
    SID and status; problem JSON otherwise (400 a bad request, 403 not allowed by the policy,
    408 a body that did not arrive within BODY_TIMEOUT, 413 one past MAX_CALL_BODY, 429 with
    Retry-After over concurrent_calls or the account's CPS, 502 Twilio's refusal with its code,
    503 Twilio or the store unreachable)."""
    return await _outbound(request, ("calls:write",), _place_call)


async def _outbound(request: web.Request, scopes: tuple[str, ...], work: Work) -> web.Response:
    """What every outbound POST does before its own work: the token and its scopes, the `api`
    bucket, the body read whole (bounded in size and time), and an Idempotency-Key honoured."""
    services = request.app[SERVICES]
    exchange = _exchange(request, services)
    grant = await _grant(request, exchange, services, scope=scopes[0])
    if isinstance(grant, web.Response):
        return grant
    try:
        for scope in scopes[1:]:
            grant.require(scope)
    except ScopeError as error:
        exchange.decision = "forbidden"
        return responses.insufficient_scope(error.scope)
    tenant = grant.tenant
    decision = await _charge(services, exchange, tenant)
    if decision is not None and not decision.allowed:
        return responses.too_many(Refused(decision))
    body = await _body(request, exchange)
    if isinstance(body, web.Response):
        return body  # before the Idempotency-Key: only a body read whole can become a kept answer
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return await work(services, exchange, tenant, body)
    digest = idempotency.fingerprint(request.method, request.path, body)
    return await idempotency.once(
        services.idempotent, tenant.id, key, digest, lambda: work(services, exchange, tenant, body)
    )


class _TooLarge(Exception):
    """The body is past MAX_CALL_BODY (said so by its Content-Length, or grown so chunked)."""


async def _body(request: web.Request, exchange: Exchange) -> bytes | web.Response:
    """The whole body, at most MAX_CALL_BODY bytes, within BODY_TIMEOUT; or the answer to give
    (413, 408, 400 for a malformed one; the client gone: nobody to answer, a 499 line)."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await _read_whole(request, MAX_CALL_BODY)
    except _TooLarge:
        exchange.decision = "refused"
        return responses.body_too_large(MAX_CALL_BODY)
    except TimeoutError:
        exchange.decision = "body_timeout"
        return responses.body_timeout()
    except CLIENT_GONE:
        exchange.decision = "client_closed"
        return responses.no_content()  # nobody is left to read it; the access line says 499
    except MALFORMED:
        exchange.decision = "malformed"
        return responses.malformed_body()


async def _read_whole(request: web.Request, limit: int) -> bytes:
    """Every byte of the body up to its end, or _TooLarge as soon as it is past `limit`.

    `content.read(n)` returns what has arrived so far, not n bytes: a body sent in two writes
    would be cut at the first. So read until the end, never holding more than limit + 1 bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise _TooLarge  # said up front: nothing of it is read
    content = request.content
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise _TooLarge


async def _place_call(services: Services, exchange: Exchange, tenant: Tenant, body: bytes) -> web.Response:
    try:
        params = outbound_calls.parse(body, tenant)
        if services.calls is None:
            raise CallRefused(503, "No outbound session", "the gateway is not serving")
        placed = await services.calls.place(tenant, params, _status_url(services, tenant), exchange)
    except CallRefused as refused:
        return _refused(exchange, refused)
    exchange.decision = "placed"
    exchange.sid = placed.sid
    return responses.json({"sid": placed.sid, "status": placed.status, "tenant": tenant.id}, status=201)


async def messages(request: web.Request) -> web.Response:
    """POST /api/v1/messages: send a text for the token's tenant (scope messages:write):
    `{"to", "from", "body"}`; 201 with its SID, status and segments; problem JSON otherwise."""
    return await _outbound(request, ("messages:write",), _send_message)


async def _send_message(services: Services, exchange: Exchange, tenant: Tenant, body: bytes) -> web.Response:
    try:
        params = outbound_messages.parse(body, tenant)
        if services.messages is None:
            raise CallRefused(503, "No outbound session", "the gateway is not serving")
        _message_status(services, tenant, params)
        sent = await services.messages.send(tenant, params, exchange)
    except CallRefused as refused:
        return _refused(exchange, refused)
    exchange.decision = "sent"
    exchange.sid = sent.sid
    answer = {"sid": sent.sid, "status": sent.status, "segments": sent.segments, "tenant": tenant.id}
    return responses.json(answer, status=201)


AFTER_HOURS_RING = 120  # s: the after-hours call rings this long (at most the policy's ring_timeout_s)


async def after_hours(request: web.Request) -> web.Response:
    """POST /api/v1/after-hours: the call and the text of the after-hours race, at once (scopes
    calls:write and messages:write): `{"to", "from", "body", "route" | "url" | "twiml"}`. Each
    leg goes through its own limits, pacing, budget and slot, and one failing never cancels the
    other: 200 with `{"call": {...}, "message": {...}}`, each leg's answer (201) or problem."""
    return await _outbound(request, ("calls:write", "messages:write"), _race)


async def _race(services: Services, exchange: Exchange, tenant: Tenant, body: bytes) -> web.Response:
    try:
        _, data = outbound_calls.request_of(body, tenant)
        call = outbound_calls.parse_data({k: v for k, v in data.items() if k != "body"}, tenant, AFTER_HOURS_RING)
        text = outbound_messages.parse_data({k: data.get(k) for k in ("to", "from", "body")}, tenant)
        if services.calls is None or services.messages is None:
            raise CallRefused(503, "No outbound session", "the gateway is not serving")
        status_callback = _status_url(services, tenant)
        _message_status(services, tenant, text)
    except CallRefused as refused:
        return _refused(exchange, refused)
    calls, messages = services.calls, services.messages

    async def call_leg() -> dict[str, object]:
        placed = await calls.place(tenant, call, status_callback, exchange)
        return {"status": 201, "sid": placed.sid, "call_status": placed.status}

    async def message_leg() -> dict[str, object]:
        sent = await messages.send(tenant, text, exchange)
        return {"status": 201, "sid": sent.sid, "message_status": sent.status, "segments": sent.segments}

    legs = await asyncio.gather(_leg(call_leg()), _leg(message_leg()))
    exchange.decision = "sent" if any(leg["status"] == 201 for leg in legs) else "refused"
    return responses.json({"call": legs[0], "message": legs[1], "tenant": tenant.id})


async def _leg(work: Awaitable[dict[str, object]]) -> dict[str, object]:
    """One leg's answer, or its refusal as problem details: a leg that fails is reported, never
    raised, so it cannot cancel the other."""
    try:
        return await work
    except CallRefused as refused:
        leg: dict[str, object] = {"status": refused.status, "title": refused.title, "detail": refused.detail}
        if refused.code is not None:
            leg["twilio_code"] = refused.code
        if refused.retry_after:
            leg["retry_after"] = max(1, math.ceil(refused.retry_after))
        return leg


def _status_url(services: Services, tenant: Tenant) -> str:
    """The gateway's own status callback for what the API places (Twilio calls it back there)."""
    public = services.public_url.first
    if public is None:
        raise CallRefused(503, "No public URL", "the gateway has no --public-url for Twilio's status callbacks")
    return status_url(public, tenant)


def _message_status(services: Services, tenant: Tenant, params: dict[str, object]) -> None:
    """A text's statuses come to the gateway only to go on to the tenant's own status callback:
    asked for only when its policy names one."""
    if tenant.outbound is not None and tenant.outbound.status_callback is not None:
        params["status_callback"] = _status_url(services, tenant)


def _refused(exchange: Exchange, refused: CallRefused) -> web.Response:
    exchange.decision = "refused"
    exchange.error = refused.title
    headers = {"Retry-After": str(max(1, math.ceil(refused.retry_after)))} if refused.retry_after else None
    extra = {"twilio_code": refused.code} if refused.code is not None else {}
    return responses.problem(refused.status, refused.title, refused.detail, headers=headers, **extra)


def _exchange(request: web.Request, services: Services) -> Exchange:
    exchange = Exchange("api", services.registry.current, services.clock)
    exchange.recorder = services.recorder
    request[EXCHANGE] = exchange
    return exchange


async def _grant(
    request: web.Request, exchange: Exchange, services: Services, scope: str | None
) -> Grant | web.Response:
    """What a valid bearer JWT allows, its tenant set on the exchange; or the answer to give:
    401 (no or a bad token), 403 (a good token without `scope`), 503 (the tenant's key set
    could not be fetched). Nothing is charged before this passes."""
    try:
        grant = await jwt.verify(
            jwt.bearer(request.headers.get("Authorization")), exchange.policies.tenants, services.jwks
        )
    except SignatureError as error:
        exchange.decision = "unauthorized"
        return responses.unauthorized(error.reason if _bearer_sent(request) else None)
    except JwksUnavailable:
        exchange.decision = "error"
        return responses.problem(503, "Key set unavailable", "the tenant's JWKS could not be fetched; try again")
    exchange.tenant = grant.tenant
    exchange.verified = True  # a valid token: what the request costs is the tenant's
    try:
        grant.require(scope)
    except ScopeError as error:
        exchange.decision = "forbidden"
        return responses.insufficient_scope(error.scope)
    return grant


async def _charge(services: Services, exchange: Exchange, tenant: Tenant) -> Decision | None:
    """Charge the tenant's `api` bucket (None when it has none); a refusal is on the exchange."""
    rules = tenant.rules["api"]
    if not rules:
        return None
    limits = services.limits
    decision = limits.acquire_now(tenant.id, rules) or await limits.acquire(
        tenant.id, rules, mode=tenant.on_store_failure
    )
    exchange.limit = decision
    if not decision.allowed:
        exchange.decision = "refused"
    return decision


def _bearer_sent(request: web.Request) -> bool:
    # RFC 6750 §3.1: no credentials, or another scheme than Bearer, is "lacks any authentication
    # information": the challenge then carries no error code.
    return (request.headers.get("Authorization") or "").partition(" ")[0].lower() == "bearer"


def _day(request: web.Request, now: float) -> str | None:
    day = request.query.get("day")
    if day is None:
        return utc_day(now)
    try:
        return datetime.date.fromisoformat(day).isoformat() if len(day) == 10 else None
    except ValueError:
        return None


async def _report(services: Services, tenant: Tenant, day: str) -> dict[str, object]:
    spend = await services.ledger.spend(tenant.id, day)
    cap = tenant.daily_budget
    report: dict[str, object] = {
        "tenant": tenant.id,
        "day": day,
        "currency": "USD",
        "spent_usd": to_usd(spend.total),
        "parts_usd": {part: to_usd(spend.parts.get(part, 0)) for part in PARTS},
        "reserved_usd": to_usd(spend.reserved),
    }
    if cap is not None:
        left = cap - spend.total - spend.reserved
        report["budget"] = {"daily_usd": to_usd(cap), "remaining_usd": to_usd(max(0, left)), "exhausted": left <= 0}
    else:
        report["budget"] = None
    return report
