"""create_app(settings) → web.Application: routes, and one cleanup_ctx per client it opens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from gateway.auth.public_url import PublicUrl, parse_proxies
from gateway.clock import Clock, monotonic
from gateway.egress import Egress, open_session
from gateway.errors import BackendError
from gateway.handlers import api, health
from gateway.handlers.twilio import webhook
from gateway.keys import EGRESS, LIFECYCLE, SERVICES
from gateway.limits.factory import stores_from_url
from gateway.policy import watch
from gateway.policy.loader import LoadContext
from gateway.policy.registry import Registry
from gateway.server import Lifecycle
from gateway.services import Services
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("switchyard")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings, env: Mapping[str, str] | None = None, clock: Clock | None = None) -> web.Application:
    """Load and check everything that can be checked before serving; raise PolicyError/ValueError early."""
    env = os.environ if env is None else env
    public_url = PublicUrl(settings.public_urls, parse_proxies(settings.trusted_proxies))
    registry = Registry(settings.policies_dir, LoadContext(env=env, public_url=public_url.first))
    metrics = Metrics()
    app = web.Application()
    app[LIFECYCLE] = Lifecycle()  # /readyz reads it; gateway/server.py drains
    app.cleanup_ctx.append(_egress)
    app.cleanup_ctx.append(_stores(settings, registry, public_url, metrics, clock))
    app.cleanup_ctx.append(_policy_watch(registry, settings.reload_interval, metrics))
    for kind in ("voice", "sms", "status"):
        handler = webhook(kind)
        app.router.add_post(f"/twilio/{kind}", handler)
        app.router.add_post(f"/t/{{tenant}}/{kind}", handler)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/api/v1/limits", api.limits)
    return app


def _stores(
    settings: Settings, registry: Registry, public_url: PublicUrl, metrics: Metrics, clock: Clock | None
) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stores = stores_from_url(settings.limiter_url, clock=clock, instance_id=settings.instance_id)
        await stores.start()
        stores.failover.on_transition(_log_transition(settings.limiter_url, metrics))
        if stores.instances is not None:
            metrics.live_instances.set_function(stores.instances.live_instances)
        else:
            metrics.live_instances.set(1)
        app[SERVICES] = Services(
            settings=settings,
            registry=registry,
            public_url=public_url,
            limits=stores.failover,
            metrics=metrics,
            clock=clock or monotonic,
            egress=app[EGRESS],
        )
        try:
            yield
        finally:
            await stores.close()

    return ctx


async def _egress(app: web.Application) -> AsyncIterator[None]:
    """The one client session every call out shares (egress.py), closed after the last request."""
    session = open_session()
    app[EGRESS] = Egress(session)
    try:
        yield
    finally:
        await session.close()


def _log_transition(url: str, metrics: Metrics) -> Callable[[bool, BackendError | None], None]:
    store = url.split("://", 1)[0]

    def transition(degraded: bool, error: BackendError | None) -> None:
        metrics.degraded(degraded)
        if degraded:
            log.error("limit store %s failing (%s); tenants' on_store_failure rules apply", store, error)
        else:
            log.warning("limit store %s answering again; shared limits restored", store)

    return transition


def _policy_watch(registry: Registry, interval: float, metrics: Metrics) -> CleanupCtx:
    def counted(ok: bool) -> None:
        metrics.policy_reloads.labels(outcome="ok" if ok else "refused").inc()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch.watch(registry, interval, counted)) if interval > 0 else None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only the main thread of a process may own signal handlers; tests run elsewhere.
            loop.add_signal_handler(signal.SIGHUP, watch.reload, registry, "SIGHUP", counted)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)

    return ctx
