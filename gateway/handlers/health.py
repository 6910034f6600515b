"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from gateway import responses
from gateway.keys import LIFECYCLE, SERVICES
from gateway.telemetry.metrics import CONTENT_TYPE


async def healthz(request: web.Request) -> web.Response:
    """The process answers: nothing else is checked, so a restart is never triggered by Redis."""
    return responses.json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while policies are loaded. A failing shared store is reported as degraded, not
    unready: the instance still enforces limits locally, and taking every instance out of the
    load balancer because Redis is down would turn a limiter fault into an outage. Draining
    (after SIGTERM) is unready, 503, so the load balancer sends nothing more while requests in
    flight finish."""
    services = request.app[SERVICES]
    limits, budget = services.limits.degraded, services.ledger.degraded
    draining = request.app[LIFECYCLE].draining
    return responses.json(
        {
            "status": "draining" if draining else "degraded" if limits or budget else "ready",
            "tenants": len(services.registry.current.tenants),
            "limits": {"store": services.settings.limiter_url.split("://", 1)[0], "degraded": limits},
            "budget": {"degraded": budget},
        },
        status=503 if draining else 200,
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition: this process's metrics, or with --workers the whole server's (any
    worker answers for all: they share one directory of metric files, telemetry/metrics.py)."""
    body = await request.app[SERVICES].metrics.scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
