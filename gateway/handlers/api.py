"""The JSON API for tenants' own clients (JWT): read your limits; charged to the `api` bucket."""

from __future__ import annotations

from aiohttp import web

from gateway import responses
from gateway.auth import jwt
from gateway.errors import Refused, SignatureError
from gateway.exchange import Exchange
from gateway.keys import EXCHANGE, SERVICES


async def limits(request: web.Request) -> web.Response:
    """GET /api/v1/limits: the tenant's configured buckets, with RateLimit headers."""
    services = request.app[SERVICES]
    exchange = Exchange("api", services.registry.current, services.clock)
    request[EXCHANGE] = exchange
    header = request.headers.get("Authorization")
    try:
        token = jwt.bearer(header)
        tenant = jwt.tenant_of(token, exchange.policies.tenants)
    except SignatureError:
        exchange.decision = "unauthorized"
        # RFC 6750 §3.1: no credentials, or another scheme than Bearer, is "lacks any
        # authentication information": the challenge then carries no error code.
        sent_bearer = (header or "").partition(" ")[0].lower() == "bearer"
        return responses.unauthorized(credentials_given=sent_bearer)
    exchange.tenant = tenant
    decision = None
    rules = tenant.rules["api"]
    if rules:
        limits = services.limits
        decision = limits.acquire_now(tenant.id, rules) or await limits.acquire(
            tenant.id, rules, mode=tenant.on_store_failure
        )
        exchange.limit = decision
        if not decision.allowed:
            exchange.decision = "refused"
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
