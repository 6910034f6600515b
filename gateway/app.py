"""create_app(settings) → web.Application: routes, and one cleanup_ctx per client it opens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.auth.public_url import PublicUrl, parse_proxies
from gateway.clock import Clock, Sleep, monotonic
from gateway.egress import Egress, open_session
from gateway.errors import BackendError
from gateway.handlers import api, health, stream
from gateway.handlers.twilio import webhook
from gateway.keys import EGRESS, LIFECYCLE, SERVICES, STORES
from gateway.lifecycle import Lifecycle
from gateway.limits.budget import utc_day
from gateway.limits.factory import stores_from_url
from gateway.policy import heap, watch
from gateway.policy.loader import LoadContext
from gateway.policy.registry import PolicySet, Registry
from gateway.services import Services
from gateway.settings import ADMIN_TOKEN_VARIABLE, TWILIO_API_BASE_VARIABLE, Settings
from gateway.telemetry import accesslog
from gateway.telemetry.cost import MICRO
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.recorder import Recorder
from gateway.telemetry.spans import SpanBuilder
from gateway.telemetry.tracing import SpanExporter, TracingConfig

log = logging.getLogger("switchyard")

# How often the budget-remaining gauges are set (for the budgeted tenants that spent: metrics.spenders).
BUDGET_GAUGE_INTERVAL = 10.0
# A gauge's first setting makes its series (5.7 µs, then 1.9 µs) and the in-process reads are
# coroutines that never wait: the loop is given a turn every this many (~1.5 ms), so thousands
# of tenants spending at once never hold it for one pass.
GAUGES_PER_TURN = 256
# How often in-process limit state that went idle (buckets full again, lapsed leases) is forgotten.
SWEEP_INTERVAL = 10.0
# The operators' token reads every tenant's spend: a guessable one is refused at start-up.
MIN_ADMIN_TOKEN_BYTES = 32
# What a shutdown gives the span exporter to send what is queued.
EXPORT_SHUTDOWN = 5.0

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


@dataclass(frozen=True, slots=True)
class Outbound:
    """How the outbound API waits (tests step a fake clock) and where Twilio's REST API is."""

    sleep: Sleep
    api_base: str | None


def create_app(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    wall: Callable[[], float] | None = None,
    sleep: Sleep | None = None,
) -> web.Application:
    """Load and check everything that can be checked before serving; raise PolicyError/ValueError early.

    env: secrets and the OTEL_* variables; clock: monotonic time (limits, deadlines); wall: the
    wall clock whose UTC day spend is booked to. Tests inject all three."""
    env = os.environ if env is None else env
    public_url = PublicUrl(settings.public_urls, parse_proxies(settings.trusted_proxies))
    with heap.paused():  # then frozen out of the collector's sight (policy/heap.py)
        registry = Registry(settings.policies_dir, LoadContext(env=env, public_url=public_url.first), parallel=True)
    tracing = TracingConfig.from_env(env, settings.instance_id)  # None: tracing off, at no cost
    metrics = Metrics()
    registry.on_swap(_swapped(metrics, clock or monotonic))
    app = web.Application()
    app[LIFECYCLE] = Lifecycle()  # /readyz reads it; gateway/server.py drains
    app.cleanup_ctx.append(_egress)
    admin = env.get(ADMIN_TOKEN_VARIABLE) or None  # unset: no operator view
    if admin is not None and len(admin.encode()) < MIN_ADMIN_TOKEN_BYTES:
        raise ValueError(f"{ADMIN_TOKEN_VARIABLE} must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (a random secret)")
    outbound = Outbound(sleep or asyncio.sleep, env.get(TWILIO_API_BASE_VARIABLE) or None)
    app.cleanup_ctx.append(
        _stores(settings, registry, public_url, metrics, tracing, clock, wall or time.time, admin, outbound)
    )
    app.cleanup_ctx.append(_policy_watch(registry, settings.reload_interval, metrics))
    app.on_shutdown.append(close_streams)
    for kind in ("voice", "sms", "status"):
        handler = webhook(kind)
        app.router.add_post(f"/twilio/{kind}", handler)
        app.router.add_post(f"/t/{{tenant}}/{kind}", handler)
    app.router.add_get("/t/{tenant}/stream", stream.stream)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/api/v1/limits", api.limits)
    app.router.add_get("/api/v1/cost", api.cost)
    app.router.add_get("/api/v1/admin/cost", api.admin_cost)
    app.router.add_post("/api/v1/calls", api.calls)
    app.router.add_post("/api/v1/messages", api.messages)
    app.router.add_post("/api/v1/after-hours", api.after_hours)
    return app


def _stores(
    settings: Settings,
    registry: Registry,
    public_url: PublicUrl,
    metrics: Metrics,
    tracing: TracingConfig | None,
    clock: Clock | None,
    wall: Callable[[], float],
    admin_token: str | None,
    outbound: Outbound,
) -> CleanupCtx:
    """The limit and spend stores, and what records each request at its end (spans, metrics,
    the ledger): opened before the first request, closed after the last one's record."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stores = app[STORES] = stores_from_url(settings.limiter_url, clock=clock, instance_id=settings.instance_id)
        store = settings.limiter_url.split("://", 1)[0]
        # Told before the first heartbeat: a store unreachable from start-up is logged and counted.
        stores.failover.on_transition(_log_transition(store, "limits", metrics, LIMITS_DEGRADED))
        stores.ledger.on_transition(_log_transition(store, "budget", metrics, BUDGET_DEGRADED))
        await stores.start()
        if stores.instances is not None:
            metrics.count_instances(stores.instances.live_instances)
        else:
            metrics.live_instances.set(1)
        exporter = None
        builder = None
        if tracing is not None:
            exporter = SpanExporter(tracing, on_dropped=metrics.spans_dropped)
            await exporter.start()
            builder = SpanBuilder(tracing.sampler, store=settings.limiter_url.split("://", 1)[0])
        recorder = Recorder(metrics, stores.ledger, builder, exporter, wall)
        services = app[SERVICES] = Services(
            settings=settings,
            registry=registry,
            public_url=public_url,
            limits=stores.failover,
            ledger=stores.ledger,
            recorder=recorder,
            answers=stores.answers,
            idempotent=stores.idempotent,
            leases=stores.leases,
            metrics=metrics,
            clock=clock or monotonic,
            wall=wall,
            egress=app[EGRESS],
            admin_token=admin_token.encode() if admin_token else None,
            sleep=outbound.sleep,
            twilio_api_base=outbound.api_base,
        )
        now = clock or monotonic

        def sweep() -> int:
            metrics.reconcile(now())  # a removed tenant's series made anew by what was in flight
            return stores.sweep()

        background = [asyncio.create_task(_budget_gauges(services)), asyncio.create_task(_sweep(sweep))]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # The last requests' records first (their spans and spend), then the stores.
            accesslog.flush()
            await recorder.close()
            if exporter is not None:
                await exporter.shutdown(timeout=EXPORT_SHUTDOWN)
            await stores.close()

    return ctx


async def _budget_gauges(services: Services) -> None:
    """Every BUDGET_GAUGE_INTERVAL, what is left of today's budget for each budgeted tenant that
    spent (metrics.spenders: bounded by the tenants at work, not by the policies). A shared
    ledger is not asked: each of its replies carries the tenant-day's total (last_seen), so the
    gauges cost no round trip at any number of tenants; a tenant with no reply today yet has no
    figure (yesterday's is dropped). The in-process ledger is read, without I/O."""
    ledger, metrics = services.ledger, services.metrics
    while True:
        day = utc_day(services.wall())
        tenants = services.registry.current.tenants
        for turn, tenant_id in enumerate(list(metrics.spenders)):
            if turn % GAUGES_PER_TURN == GAUGES_PER_TURN - 1:
                await asyncio.sleep(0)
                tenants = services.registry.current.tenants  # a reload may have swapped meanwhile
            if tenant_id not in metrics.spenders:
                continue  # forgotten meanwhile (its tenant removed): no gauge made anew
            tenant = tenants.get(tenant_id)
            cap = None if tenant is None else tenant.daily_budget
            if cap is None:
                metrics.spenders.discard(tenant_id)  # removed, or its budget lifted
                metrics.budget_remaining(tenant_id, None)
                continue
            if ledger.shared:
                total = ledger.last_seen(tenant_id, day)
            else:
                try:
                    spend = await ledger.spend(tenant_id, day)
                except Exception:  # a gauge must never stop for good: log, and go on next time
                    log.exception("reading tenant %s's spend for the budget gauge failed", tenant_id)
                    break
                total = spend.total + spend.reserved
            metrics.budget_remaining(tenant_id, None if total is None else max(0, cap - total) / MICRO)
        await asyncio.sleep(BUDGET_GAUGE_INTERVAL)


async def _sweep(sweep: Callable[[], int]) -> None:
    """In-process limit state that went idle is forgotten on a timer, not only every few
    thousand charges: memory follows the tenants active lately, even while none calls."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        sweep()


def _swapped(metrics: Metrics, clock: Clock) -> Callable[[PolicySet, PolicySet], None]:
    def swapped(old: PolicySet, new: PolicySet) -> None:
        metrics.tenants_changed(old.tenants.keys(), new.tenants.keys(), clock())

    return swapped


async def close_streams(app: web.Application) -> None:
    """At shutdown (after the drain's grace period): open Media Streams are closed with 1001,
    so Twilio moves on to the fallback after </Connect>, and their minutes are booked. The
    server calls it before aiohttp's cleanup, which stops reading every connection first (and
    a closing handshake needs Twilio's answer); on_shutdown's call then finds none open."""
    services = app.get(SERVICES)
    if services is not None and len(services.streams):
        log.info("closing %d open stream(s)", len(services.streams))
        await services.streams.stop_all("shutdown")


async def _egress(app: web.Application) -> AsyncIterator[None]:
    """The one client session every call out shares (egress.py), closed after the last request."""
    egress = app[EGRESS] = Egress(open_session())
    try:
        yield
    finally:
        await egress.close()


# What each part does while the shared store fails, said once when it starts (policies/README.md
# "When the limit store fails" has the bounds).
LIMITS_DEGRADED = "tenants' on_store_failure rules apply to their buckets (local: this instance's share)"
BUDGET_DEGRADED = (
    "budgets follow on_store_failure (local: this instance's share of what the store last said was left "
    "of each day; spend booked here is replayed once it answers)"
)


def _log_transition(
    store: str, part: str, metrics: Metrics, meaning: str
) -> Callable[[bool, BackendError | None], None]:
    """Once per change, at WARNING, with the reason: the limiter and the ledger each say theirs."""

    def transition(degraded: bool, error: BackendError | None) -> None:
        metrics.degraded(part, degraded)
        if degraded:
            log.warning("%s store %s failing (%s); %s", part, store, error, meaning)
        else:
            log.warning("%s store %s answering again; shared %s restored", part, store, part)

    return transition


def _policy_watch(registry: Registry, interval: float, metrics: Metrics) -> CleanupCtx:
    def counted(ok: bool) -> None:
        metrics.policy_reloads.labels(outcome="ok" if ok else "refused").inc()

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks: set[asyncio.Task[object]] = set()
        stop = asyncio.Event()  # ends the file watcher's thread at once, not at its next timeout
        if interval > 0:
            tasks.add(asyncio.create_task(watch.watch(registry, interval, counted, stop=stop)))

        def hangup() -> None:
            # Everything again (secrets, the files policies name), in a worker thread.
            task = asyncio.create_task(watch.reload_soon(registry, "SIGHUP", counted, full=True))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # Only the main thread of a process may own signal handlers; tests run elsewhere.
            loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            yield
        finally:
            stop.set()
            for task in list(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)

    return ctx
