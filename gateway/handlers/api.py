"""The JSON API for tenants' own clients (JWT): read your limits; charged to the `api` bucket."""

from __future__ import annotations

from aiohttp import web

from gateway import responses
from gateway.auth import jwt
from gateway.errors import Refused, SignatureError
from gateway.keys import LOG, SERVICES
from gateway.logfields import LogFields


async def limits(request: web.Request) -> web.Response:
    """GET /api/v1/limits: the tenant's configured buckets, with RateLimit headers."""
    services = request.app[SERVICES]
    fields = LogFields(kind="api")
    request[LOG] = fields
    try:
        token = jwt.bearer(request.headers.get("Authorization"))
        tenant = jwt.tenant_of(token, services.registry.current.tenants)
    except SignatureError:
        fields.decision = "unauthorized"
        return responses.unauthorized()
    fields.tenant = tenant.id
    decision = None
    rules = tenant.rules["api"]
    if rules:
        decision = await services.limits.acquire(tenant.id, rules, 1, None, mode=tenant.on_store_failure)
        if not decision.allowed:
            fields.decision = "refused"
            return responses.too_many(Refused(decision))
    fields.decision = "answered"
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
