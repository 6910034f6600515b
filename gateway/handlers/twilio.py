"""Twilio webhooks: tenant → signature → limits → route → action, in that order, in one handler.

The steps run as plain calls in one coroutine rather than as aiohttp middlewares: each
middleware layer costs a wrapper call and a coroutine frame on every request of every route,
while these steps only ever apply to the Twilio routes. The order is the design's, and it
matters: a forged request is refused before it can spend any quota.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import orjson
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from gateway import responses
from gateway.actions import Incoming
from gateway.actions.stream import stream_holds
from gateway.auth.twilio_signature import (
    SIGNATURE,
    SIGNATURE_SETTINGS,
    algorithm_from_settings,
    verify_form,
    verify_json,
)
from gateway.deadline import DeadlineExceeded
from gateway.errors import AdmissionRefused, BackendError, UpstreamError
from gateway.exchange import Exchange
from gateway.keys import EXCHANGE, SERVICES
from gateway.limits.answers import Claim, usable
from gateway.limits.base import RetryKey
from gateway.limits.budget import BudgetCharge, Hold, Reservation, utc_day
from gateway.limits.webhook import admit, admit_now
from gateway.outbound import status as status_forward
from gateway.outbound.calls import call_hold, call_lease, give_back, release_hold
from gateway.policy.registry import PolicySet
from gateway.policy.tenant import CompiledRoute, Tenant
from gateway.protocol import twiml
from gateway.protocol.forms import parse_form
from gateway.services import Services
from gateway.telemetry.cost import Cost, add, message_segments, sms_cost
from gateway.telemetry.usage import BILLING_FIELDS, cost_of

WebhookKind = Literal["voice", "sms", "status"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IDEMPOTENCY = "I-Twilio-Idempotency-Token"
OUTBOUND = frozenset({"outbound-api", "outbound-dial"})
# Twilio's headers an upstream runtime may want (its own signature is made anew for it).
FORWARDED_HEADERS = (IDEMPOTENCY, "I-Twilio-Retry-Count", "X-Home-Region", "User-Agent")
# The client went away before (or while) its body arrived: nothing to answer, nothing to log
# as our failure. aiohttp raises these from request.read().
CLIENT_GONE = (ClientConnectionResetError, ConnectionResetError)
# A call's final statuses (Twilio sends one of these last): its held estimate is dropped then.
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# How long a call's estimate is held if its final status never comes (no status callback set):
# a call lasts at most 4 hours.
CALL_RESERVE_TTL = 4 * 3600.0 + 300.0
# How long a body may take to arrive after its head (Twilio's arrive with it).
BODY_TIMEOUT = 5.0

log = logging.getLogger("switchyard.twilio")


def webhook(kind: WebhookKind) -> Handler:
    """The handler for one webhook kind; Twilio never gets a 5xx from it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        # The request keeps this snapshot for its whole life, its fallback included.
        exchange = Exchange(kind, services.registry.current, services.clock)
        exchange.recorder = services.recorder
        request[EXCHANGE] = exchange
        try:
            # One coroutine for the whole pipeline: each extra frame per request is measurable.
            path_tenant = request.match_info.get("tenant")
            if path_tenant is not None and (named := exchange.policies.tenants.get(path_tenant)) is not None:
                # Twilio's clock for this tenant runs from the request's start: the body read too.
                exchange.budget = named.webhook_timeout
            try:
                if request.content.is_eof():
                    body = await request.read()  # the whole body came with the head: no timer
                else:
                    # A body still arriving must not hold a handler (and a drain) forever.
                    async with asyncio.timeout(exchange.deadline().timeout(cap=BODY_TIMEOUT)):
                        body = await request.read()
            except CLIENT_GONE:
                exchange.decision = "client_closed"
                return responses.no_content()
            except (RequestPayloadError, HttpProcessingError):  # a body the parser refused
                exchange.decision = "malformed"
                return responses.bad_request()
            except TimeoutError:
                exchange.decision = "body_timeout"
                return responses.request_timeout()
            headers = request.headers
            is_json = headers.get("Content-Type", "").startswith("application/json")
            params = _json_params(body) if is_json else parse_form(body)
            if kind != "voice":  # a call's own webhook costs what its answer says; nothing to keep
                exchange.fields = {name: values[0] for name in BILLING_FIELDS if (values := params.get(name))}
            # Kept raw for the access log, which bounds and masks them (the request is not yet
            # verified: nothing from it is trusted or written at length).
            exchange.caller, exchange.called = _first(params, "From"), _first(params, "To")
            exchange.sid = _first(params, "CallSid") or _first(params, "MessageSid")

            tenant = _find_tenant(exchange.policies, path_tenant, params)
            if tenant is None:
                exchange.decision = "unknown-tenant"
                return _unknown(kind)
            exchange.tenant = tenant
            # From the request's start (the deadline counts from exchange.started), so the time
            # its body took is spent from the tenant's own Twilio timeout.
            exchange.budget = tenant.webhook_timeout

            public = services.public_url
            url = public.fixed
            if url is not None:
                url += request.raw_path  # the common case needs no peer or host lookup
            else:
                url = public.rebuild(
                    scheme=request.scheme,
                    host=request.host,
                    path_qs=request.raw_path,
                    peer=request.remote,
                    forwarded_proto=headers.get("X-Forwarded-Proto"),
                    forwarded_host=headers.get("X-Forwarded-Host"),
                )
            signature = headers.get(SIGNATURE, "")
            algorithm = algorithm_from_settings(headers.get(SIGNATURE_SETTINGS))
            if url is None:
                valid = False  # no URL we can trust: the peer is no proxy and names no public URL
            elif is_json:
                valid = verify_json(url, body, signature, tenant.keys, algorithm)
            else:
                valid = verify_form(url, params, signature, tenant.keys, algorithm)
            if not valid:
                exchange.decision = "forged"
                log.warning("invalid Twilio signature for tenant %s on a %s webhook", tenant.id, kind)
                return responses.forbidden_signature()
            exchange.verified = True

            if kind == "status":
                exchange.decision = "recorded"
                if _first(params, "CallStatus") in FINAL_CALL_STATUSES:
                    if tenant.daily_budget is not None:
                        await _release_call(exchange, tenant, services)
                    if _first(params, "Direction") == "outbound-api":
                        await _release_call_slot(request, tenant, services)
                if status_forward.wanted(tenant, request.query):
                    await _forward_status(exchange, tenant, services, request, params, body)
                return responses.no_content()

            # The route first (pure: no I/O): what the answer costs is charged with the buckets.
            route = tenant.route(kind, params)
            exchange.reply = tenant.fallback[kind] if route is None else route.reply
            budget = spent = None
            if tenant.daily_budget is not None:
                spent = cost_of(exchange, tenant.prices)
                budget = _budget_charge(exchange, tenant, services, spent)
            rules = tenant.rules[kind]
            if rules or budget is not None:
                # A retry is the same signed request again: the token is bound to its signature.
                retry = _retry_key(headers, signature)
                admission = admit_now(services.limits, services.ledger, tenant.id, rules, retry, budget)
                if admission is None:  # shared stores: one (coalesced) round trip for buckets and budget
                    clock = services.clock
                    sent = clock()
                    mode = tenant.on_store_failure
                    admission = await admit(services.limits, services.ledger, tenant.id, rules, retry, budget, mode)
                    exchange.timed("limits", clock() - sent, sent)
                decision = admission.decision
                if decision is not None:
                    exchange.limit = decision
                    if decision.retry != "new":
                        exchange.retry = decision.retry
                        if decision.retry == "mismatch":
                            log.warning("tenant %s: a retry token came back with another request; charged", tenant.id)
                    if not decision.allowed:
                        exchange.decision = "refused"
                        exchange.route = f"limit:{decision.rule.name}"
                        exchange.reply = None
                        return responses.twiml(tenant.refusal[kind])
                if route is not None:
                    exchange.route = route.name
                    exchange.action = route.action
                if admission.budget == "over":
                    exchange.decision = "over-budget"
                    return responses.twiml(tenant.budget_refusal[kind])
                if admission.budget == "charged":
                    exchange.charged = spent
            elif route is not None:
                exchange.route = route.name
                exchange.action = route.action
            if route is None:
                exchange.decision = "no-route"
                return responses.twiml(tenant.fallback[kind])
            reply = route.reply
            if reply is None:
                assert url is not None, "only a request verified against a URL gets here"
                reply = await _call_out(exchange, route, request, services, url, params, body)
                exchange.reply = reply
            else:
                exchange.decision = "answered"  # static: bytes rendered at load, no await
            return responses.twiml(reply)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("webhook failed; answering the fallback TwiML")
            exchange.decision = "error"
            return _fallback(exchange, kind)

    return handle


async def _call_out(
    exchange: Exchange,
    route: CompiledRoute,
    request: web.Request,
    services: Services,
    url: str,
    params: Mapping[str, list[str]],
    body: bytes,
) -> bytes:
    """Run an action that does I/O under the request's deadline; its failure is the fallback."""
    call = route.call
    assert call is not None, "a compiled route has reply bytes or a call-out"
    headers = request.headers
    incoming = Incoming(
        kind=exchange.kind,
        url=url,
        params=params,
        body=body,
        content_type=headers.get("Content-Type", ""),
        headers={name: value for name in FORWARDED_HEADERS if (value := headers.get(name)) is not None},
    )
    # The call out carries the caller's trace on (and the tenant's own Twilio timeout bounds it).
    exchange.traceparent = headers.get("traceparent")
    exchange.tracestate = headers.get("tracestate")
    tenant = exchange.tenant
    deadline = exchange.deadline()  # the tenant's webhook_timeout, from the request's start
    retry = _retry_key(headers, headers.get(SIGNATURE, ""))
    claimed = retry if usable(retry) and tenant is not None else None
    reply: bytes | None = None
    try:
        if claimed is not None:
            assert tenant is not None
            # A Twilio retry of this very request: the first one's answer, never a second call.
            claim = await _claim(services, tenant.id, claimed, deadline.timeout())
            if claim is None:
                claimed = None  # the store is failing: answer this one, at the risk of a second call
            elif not claim.first:
                claimed = None  # the first request settles it, not this one
                exchange.retry = "replay"
                if claim.answer is None:
                    raise UpstreamError("retry", "no_answer", detail="the first request had no answer in time")
                exchange.decision = "replayed"
                return claim.answer
        assert services.tools is not None, "the app's outbound session is open while serving"
        # The action takes its own timeouts from the deadline; this bounds one that does not.
        async with asyncio.timeout(deadline.timeout()):
            answer = await call.run(exchange, incoming, deadline, services.tools)
        assert tenant is not None
        # Before it is kept for the retries: a retry must hear the refusal, not the texts.
        if tenant.daily_budget is not None and not await _answer_fits(exchange, tenant, services, answer):
            raise AdmissionRefused("budget", "the day cannot hold the answer's texts")
        reply = answer
    except AdmissionRefused as refused:
        # The action's own admission (a stream's slot or budget hold), or its answer's texts
        # over the day: the tenant's refusal, as for a rate limit or a spent budget, not the
        # failure fallback.
        assert tenant is not None
        over_budget = refused.limit == "budget"
        exchange.decision = "over-budget" if over_budget else "refused"
        exchange.error = refused.limit
        reply = (tenant.budget_refusal if over_budget else tenant.refusal)[exchange.kind]  # type: ignore[index]
        await _drop_call_hold(exchange, tenant, services)
        return reply
    except Exception as exc:
        # UpstreamError, DeadlineExceeded or a bug: the caller hears the route's fallback either
        # way; the log says which, briefly (the error's text never carries request data).
        exchange.decision = "fallback"
        # The reason (not_twiml, timeout, status, ...) says more than the class in the log and span.
        exchange.error = exc.reason if isinstance(exc, UpstreamError) else type(exc).__name__
        expected = isinstance(exc, UpstreamError | DeadlineExceeded | TimeoutError)
        log.warning(
            "tenant %s route %s: action %s failed (%s); answering its fallback",
            exchange.tenant_id, route.name, route.action, exc, exc_info=not expected,
        )  # fmt: skip
        reply = route.fallback
        return reply
    finally:
        if claimed is not None and tenant is not None:
            await _settle(services, tenant.id, claimed, reply)
    exchange.decision = "answered"
    return reply


async def _claim(services: Services, tenant: str, retry: RetryKey, wait: float) -> Claim | None:
    try:
        return await services.answers.claim(tenant, retry, wait)
    except BackendError as error:
        log.warning("tenant %s: retries cannot be matched to their first answer: %s", tenant, error)
        return None


async def _settle(services: Services, tenant: str, retry: RetryKey, reply: bytes | None) -> None:
    """Keep the answer for the retries (the fallback too: a retry hears what the first got)."""
    try:
        await services.answers.settle(tenant, retry, reply)
    except BackendError as error:  # the retry then waits out its claim and gets the fallback
        log.warning("tenant %s: the answer for retries could not be kept: %s", tenant, error)


async def _forget(services: Services, tenant: str, retry: RetryKey) -> None:
    try:
        await services.answers.forget(tenant, retry)
    except BackendError as error:  # it lapses with its TTL; a retry meanwhile is not forwarded
        log.warning("tenant %s: a status callback's claim could not be dropped: %s", tenant, error)


async def _answer_fits(exchange: Exchange, tenant: Tenant, services: Services, reply: bytes) -> bool:
    """A call-out's answer that sends texts (<Message>: the runtime's, a model's reply) asks the
    day for their segments before it goes to Twilio, as a static answer's were with its charge;
    the day cannot hold them: the budget refusal instead. Nothing to ask without a <Message>."""
    texts = sms_cost(tenant.prices, message_segments(reply))
    if not texts:
        return True
    day = utc_day(services.wall())
    clock = services.clock
    sent = clock()
    admitted = services.ledger.charge_now(tenant.id, day, texts, tenant.daily_budget)
    if admitted is None:  # a shared ledger: one round trip
        admitted = await services.ledger.charge(
            tenant.id, day, texts, tenant.daily_budget, mode=tenant.on_store_failure
        )
        exchange.timed("budget.charge", clock() - sent, sent)
    if admitted:
        exchange.charged = dict(add(exchange.charged or {}, texts))
    return admitted


def _budget_charge(exchange: Exchange, tenant: Tenant, services: Services, spent: Cost) -> BudgetCharge:
    """What this answer costs on the tenant's day, charged with its buckets (DESIGN §2 step 6):
    atomic in the store, so concurrent requests never overshoot the cap together.

    A static answer's cost is known now (the webhook, the SMS segments in and out). What is
    known only later (a call's minutes, a call-out's answer) is booked when it is known; until
    then a call holds its estimate, named by the call, so a retry of its webhook holds nothing
    more, and its final status callback releases it."""
    hold = None
    if exchange.kind == "voice" and tenant.call_reserve and exchange.sid:
        hold = Hold(_call_hold(exchange.sid), tenant.call_reserve, CALL_RESERVE_TTL)
    day = utc_day(services.wall())
    return BudgetCharge(day, tenant.daily_budget, spent, hold)


async def _drop_call_hold(exchange: Exchange, tenant: Tenant, services: Services) -> None:
    """A call refused after its webhook was charged: the estimate held for its minutes goes now,
    not at its final status (which a tenant's numbers may never send here: 4 h held for
    nothing). Its minutes, if it lasts, are booked from that status all the same."""
    if exchange.kind != "voice" or not tenant.call_reserve or not exchange.sid or tenant.daily_budget is None:
        return
    held = Reservation(tenant.id, utc_day(services.wall()), _call_hold(exchange.sid), tenant.call_reserve)
    await _release_holds(exchange, services, [held])


async def _release_call(exchange: Exchange, tenant: Tenant, services: Services) -> None:
    """A call ended (its final status): drop the estimates its answer held (its minutes, and a
    bridged stream's if it never opened or its end was not booked). Its real minutes are booked
    from this callback's CallDuration at the end (once, however often it comes)."""
    sid = exchange.sid
    if not sid:
        return
    day = utc_day(services.wall())
    holds = [Reservation(tenant.id, day, _call_hold(sid), tenant.call_reserve)] if tenant.call_reserve else []
    holds += stream_holds(tenant, day, sid)
    await _release_holds(exchange, services, holds)


async def _release_holds(exchange: Exchange, services: Services, holds: list[Reservation]) -> None:
    if not holds:
        return
    clock = services.clock
    sent = clock()
    for held in holds:
        await services.ledger.release(held)
    if services.ledger.shared:
        exchange.timed("budget.release", clock() - sent, sent)


async def _release_call_slot(request: web.Request, tenant: Tenant, services: Services) -> None:
    """A call placed through the outbound API ended: its concurrent_calls slot and its budget
    hold (named in the callback's URL, which the signature covers) are free again."""
    lease = call_lease(tenant, slot) if (slot := request.query.get("slot")) else None
    if lease is not None:
        await give_back(services.leases, lease)
    hold = call_hold(tenant, held) if (held := request.query.get("hold")) else None
    if hold is not None:
        await release_hold(services.ledger, hold)


async def _forward_status(
    exchange: Exchange,
    tenant: Tenant,
    services: Services,
    request: web.Request,
    params: Mapping[str, list[str]],
    body: bytes,
) -> None:
    """A status about a call or text the API placed, on to the tenant's own status callback.
    Its failure is the tenant's to see in the log and its span; Twilio gets 204 either way."""
    if services.egress is None:
        return
    headers = request.headers
    # Twilio's retry of this very callback (its idempotency token, bound to the signed request)
    # is one delivery: forwarded once, on whichever instance claims it first.
    retry = _retry_key(headers, "status-forward\x00" + headers.get(SIGNATURE, ""))
    claimed = retry if usable(retry) else None
    if claimed is not None:
        claim = await _claim(services, tenant.id, claimed, 0.0)
        if claim is not None and not claim.first:
            exchange.retry = "replay"
            return
        if claim is None:
            claimed = None  # the store is failing: forwarded, at the risk of a second delivery
    forwarded = {name: value for name in FORWARDED_HEADERS if (value := headers.get(name)) is not None}
    content_type = headers.get("Content-Type", "")
    counted = services.metrics.status_forwards
    delivered = False
    try:
        status = await status_forward.forward(exchange, tenant, params, body, content_type, forwarded, services.egress)
        delivered = status < 400
    except UpstreamError as error:
        exchange.error = "status_forward"
        counted.labels(tenant.id, "failed").inc()
        log.warning("tenant %s: its status callback was not forwarded: %s", tenant.id, error)
        return
    except ValueError:  # a forwarded header with a line break: request_head refuses to send it
        exchange.error = "status_forward"
        counted.labels(tenant.id, "failed").inc()
        log.warning("tenant %s: its status callback was not forwarded: a header could not be sent", tenant.id)
        return
    finally:
        if claimed is not None:
            if delivered:
                await _settle(services, tenant.id, claimed, None)
            else:
                await _forget(services, tenant.id, claimed)  # not delivered: Twilio's retry may try again
    if status >= 400:
        exchange.error = "status_forward"
        counted.labels(tenant.id, "refused").inc()
        log.warning("tenant %s: its status callback answered %d", tenant.id, status)
    else:
        counted.labels(tenant.id, "delivered").inc()


def _retry_key(headers: Mapping[str, str], binding: str) -> RetryKey | None:
    """Twilio's idempotency token bound to the signed request, or None: the header is not
    signed, so a replayed request may carry anything; only printable ASCII is a token (a byte
    that is not UTF-8 arrives as a lone surrogate, which no store key can encode)."""
    token = headers.get(IDEMPOTENCY)
    if not token or not token.isascii() or not token.isprintable():
        return None
    return RetryKey(token, binding)


def _call_hold(sid: str) -> str:
    return "call:" + sid[:64]  # verified, but it becomes a store key: bounded


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


def _json_params(body: bytes) -> dict[str, list[str]]:
    """Top-level scalar fields of a JSON webhook, for tenant lookup and routing only."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: [v if isinstance(v, str) else str(v)] for k, v in data.items() if isinstance(v, str | int | float)}


def _find_tenant(policies: PolicySet, path_tenant: str | None, params: Mapping[str, list[str]]) -> Tenant | None:
    """From the path; else our own number (To inbound, From on calls we placed); else the account."""
    if path_tenant is not None:
        return policies.tenants.get(path_tenant)
    ours = "From" if _first(params, "Direction") in OUTBOUND else "To"
    tenant = policies.by_number.get(_first(params, ours))
    if tenant is None:
        tenant = policies.by_account.get(_first(params, "AccountSid"))
    return tenant


def _unknown(kind: WebhookKind) -> web.Response:
    if kind == "voice":
        return responses.twiml(twiml.NOT_CONFIGURED)
    if kind == "sms":
        return responses.twiml(twiml.EMPTY)
    return responses.no_content()


def _fallback(exchange: Exchange, kind: WebhookKind) -> web.Response:
    """The fallback from the request's own snapshot: its tenant as it was when it began."""
    if kind == "status":
        return responses.no_content()
    tenant = exchange.tenant
    if tenant is not None:
        return responses.twiml(tenant.fallback[kind])
    return responses.twiml(twiml.VOICE_FALLBACK if kind == "voice" else twiml.EMPTY)
