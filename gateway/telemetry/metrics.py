"""Prometheus metrics, in a registry of the app's own so tests and several apps do not collide.

Requests are counted in batches (`observe`), read from each request's exchange at its end. Label
values come only from policies (tenant ids, bucket names) and fixed sets (kind, decision, status,
cost part), so the number of series is bounded by the policies, never by what a request carries.

With `serve --workers N` every worker counts in its own process: the supervisor gives them one
fresh PROMETHEUS_MULTIPROC_DIR (`shared_across_processes`), prometheus_client then keeps each
value in a per-process mmap file there, and whichever worker answers a scrape renders the sum of
all of them (`MultiProcessCollector`). One process keeps plain in-memory values: no files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.telemetry.cost import to_usd

if TYPE_CHECKING:
    from gateway.exchange import Exchange

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

UNKNOWN_TENANT = "unknown"  # the request named no tenant of the policies (unknown number, bad path)
NO_DECISION = "none"
SPAN_DROP_REASONS = ("queue_full", "export_failed", "shutdown")  # tracing.SpanExporter's
# From a static answer (~0.5 ms) to Twilio's whole budget (15 s by default, DESIGN §4): a webhook
# that takes longer has already failed at Twilio's end, so finer buckets past it would say nothing.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)

# A frame relayed within a millisecond is the norm; past 50 ms a caller starts to hear it.
RELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

# How long a removed tenant's series are dropped again after its removal (a Media Stream lasts
# up to 4 h; requests and call-outs end within Twilio's 15 s).
GONE_WATCH = 4 * 3600.0

Finished = tuple[int, float, "Exchange"]
"""One finished request as the end-of-request pipeline hands it over: (status, seconds, exchange)."""


def _multiprocess_dir() -> str | None:
    """The directory of the mmap files, when prometheus_client chose them: it picks its value class
    once, when first imported, from PROMETHEUS_MULTIPROC_DIR (values.py), so that choice, not the
    variable now, says how this process's metrics are kept."""
    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get(MULTIPROC_ENV)
    return None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _instances: Callable[[], int] | None = field(default=None, init=False, repr=False)
    # The budgeted tenants whose requests spent (observe): the budget gauges read only these,
    # so their cycle grows with the tenants that spend, not with the policies.
    spenders: set[str] = field(default_factory=set, init=False, repr=False)
    # Tenants removed by a reload -> when: their series are dropped again by `reconcile` for a
    # while, since requests and streams still in flight at the swap make them anew.
    _gone: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _rendering: asyncio.Future[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._multiprocess_dir = _multiprocess_dir()
        self.store_transitions = Counter(
            "switchyard_limit_store_transitions",
            "Changes of the shared limit store's state as each part sees it (part=limits: the buckets; part=budget: "
            "the spend ledger), to=degraded when it starts failing, to=healthy when back.",
            ["part", "to"],
            registry=self.registry,
        )
        # Across workers: 1 while any live worker sees the store failing (each has its own
        # failover state); a worker that exited no longer counts.
        self.store_degraded = Gauge(
            "switchyard_limit_store_degraded",
            "1 while the shared limit store fails for that part (limits: buckets; budget: spend ledger) and each "
            "tenant's on_store_failure rule applies.",
            ["part"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        for part in ("limits", "budget"):
            self.store_degraded.labels(part=part).set(0)  # a series from the start: 0 is news too
        # Every worker reads the same count from the shared store, at different times: the newest
        # reading of a live worker is the truth ("max" would keep a count from before one left).
        self.live_instances = Gauge(
            "switchyard_live_instances",
            "Gateway instances seen heartbeating in the shared store (1 for memory://).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.policy_reloads = Counter(
            "switchyard_policy_reloads", "Policy reloads by outcome.", ["outcome"], registry=self.registry
        )
        self._requests = Counter(
            "switchyard_requests",
            "Requests answered, by tenant, kind, decision and HTTP status (499: the client left first).",
            ["tenant", "kind", "decision", "status"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "switchyard_request_duration_seconds",
            "Time from the request's start to its answer, by kind.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._limit_decisions = Counter(
            "switchyard_limit_decisions",
            "Rate-limit decisions by tenant and the bucket that decided.",
            ["tenant", "bucket", "allowed"],
            registry=self.registry,
        )
        self._spend = Counter(
            "switchyard_spend_usd",
            "What requests cost the tenants, in US dollars, by cost part (prices from each policy).",
            ["tenant", "part"],
            registry=self.registry,
        )
        # The budget lives in the shared store and any worker may read it: the newest reading is
        # the truth. Not "min": after the daily reset, a worker that last saw yesterday's low
        # figure would hold the minimum down until it next served that tenant. Not a live mode:
        # a worker that exited may still hold the newest figure known.
        self._budget = Gauge(
            "switchyard_budget_remaining_usd",
            "What is left of the tenant's daily budget, in US dollars, as last read.",
            ["tenant"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self._spans_dropped = Counter(
            "switchyard_spans_dropped", "Trace spans not exported, by reason.", ["reason"], registry=self.registry
        )
        # Known from the start, so rate() sees the series before the first drop.
        for reason in SPAN_DROP_REASONS:
            self._spans_dropped.labels(reason)
        self.streams_open = Gauge(
            "switchyard_streams_open",
            "Media streams being relayed now, by tenant.",
            ["tenant"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_ends = Counter(
            "switchyard_stream_ends",
            "Media streams ended, by tenant and reason (stop, twilio_closed, runtime_closed, "
            "runtime_failed, max_duration, stalled, shutdown, protocol, not_admitted, no_start).",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.relay_latency = Histogram(
            "switchyard_stream_relay_seconds",
            "Time a sampled media frame spent in the gateway, from its arrival to its relay, by direction.",
            ["direction"],
            buckets=RELAY_BUCKETS,
            registry=self.registry,
        )
        self.status_forwards = Counter(
            "switchyard_status_forwards",
            "Status callbacks forwarded to a tenant's outbound.status_callback, by tenant and outcome "
            "(delivered: a 2xx or 3xx; refused: the runtime's 4xx or 5xx; failed: no answer).",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.frames_dropped = Counter(
            "switchyard_stream_frames_refused",
            "Frames not relayed (malformed, out of order, for another stream), by direction.",
            ["direction"],
            registry=self.registry,
        )
        self._per_tenant = (
            self._requests,
            self._limit_decisions,
            self._spend,
            self._budget,
            self.streams_open,
            self.stream_ends,
            self.status_forwards,
        )

    def degraded(self, part: str, is_degraded: bool) -> None:
        """The shared store's state as `part` ("limits" or "budget") sees it changed."""
        self.store_transitions.labels(part=part, to="degraded" if is_degraded else "healthy").inc()
        self.store_degraded.labels(part=part).set(1 if is_degraded else 0)

    def count_instances(self, source: Callable[[], int]) -> None:
        """Read the live-instance count from `source` at each scrape. A gauge's set_function is not
        seen in multiprocess mode (only the mmap files are), so the value is set, then rendered."""
        self._instances = source

    def budget_remaining(self, tenant_id: str, usd: float | None) -> None:
        """Set the gauge; None (no figure for today yet) drops a figure from another day."""
        if usd is not None:
            self._budget.labels(tenant_id).set(usd)
        elif self._multiprocess_dir is None:
            with self._budget._lock:
                self._budget._metrics.pop((tenant_id,), None)

    def tenants_changed(self, old: Iterable[str], new: Iterable[str], now: float) -> None:
        """A reload's swap: the tenants that left lose their series (now, and at each reconcile
        for GONE_WATCH seconds); one that comes back is left alone."""
        new_ids = set(new)
        for tenant_id in new_ids & self._gone.keys():
            del self._gone[tenant_id]
        removed = set(old) - new_ids
        for tenant_id in removed:
            self._gone[tenant_id] = now
        self.forget(removed)

    def reconcile(self, now: float) -> int:
        """Drop again the series of tenants removed within GONE_WATCH seconds: a batch flushed
        after the swap, a call-out or a stream of theirs that was in flight made them anew."""
        for tenant_id in [t for t, when in self._gone.items() if now - when > GONE_WATCH]:
            del self._gone[tenant_id]
        return self.forget(self._gone) if self._gone else 0

    def forget(self, tenant_ids: Iterable[str]) -> int:
        """Drop every series of these tenants (removed from the policies), so the series are
        bounded by the tenants that have policies, not by every tenant ever served; returns how
        many went. One pass over each metric's children (prometheus_client's remove_by_labels
        is one pass per tenant: a directory of 30,000 files replaced would be 30,000 passes).
        In --workers mode the values live in mmap files that prometheus_client cannot remove
        from, so they stay until the server restarts."""
        gone = set(tenant_ids)
        self.spenders -= gone
        if not gone or self._multiprocess_dir is not None:
            return 0
        dropped = 0
        for metric in self._per_tenant:
            position = metric._labelnames.index("tenant")
            with metric._lock:
                keys = [key for key in metric._metrics if key[position] in gone]
                if metric is self.streams_open:
                    # A stream still open keeps its gauge (its end decrements it): dropped at
                    # a reconcile once it reads 0, never made anew at -1.
                    keys = [key for key in keys if not _value(metric._metrics[key])]
                for key in keys:
                    del metric._metrics[key]
            dropped += len(keys)
        return dropped

    def spans_dropped(self, n: int, reason: str) -> None:
        self._spans_dropped.labels(reason).inc(n)

    def observe(self, batch: Iterable[Finished]) -> None:
        """Count a batch of finished requests: per request only dict updates; each distinct label
        set is then written once (a counter's inc costs 0.25 µs in memory, 0.75 µs in mmap mode)."""
        requests: dict[tuple[str, str, str | None, int], int] = {}
        limits: dict[tuple[str, str, bool], int] = {}
        spend: dict[tuple[str, str], int] = {}
        # Histogram.observe measured 0.64 µs a call in memory but 1.75 µs with mmap values
        # (--workers: two locked mmap writes each): over the ~1 µs a request may spend here. So
        # durations are counted per bucket and added once per bucket through prometheus_client's
        # internals (_upper_bounds, _buckets, _sum); test_metrics checks the result against
        # observe's own, so a change of those internals fails a test rather than the counts.
        bounds = DURATION_BUCKETS
        counts: dict[str, list[int]] = {}
        sums: dict[str, float] = {}
        for status, seconds, exchange in batch:
            tenant = exchange.tenant
            tenant_id = UNKNOWN_TENANT if tenant is None else tenant.id
            kind = exchange.kind
            key = (tenant_id, kind, exchange.decision, status)
            requests[key] = requests.get(key, 0) + 1
            if kind != "stream":  # a stream lasts minutes, not an answer's time: its meter is on its span
                per_bucket = counts.get(kind)
                if per_bucket is None:
                    per_bucket = counts[kind] = [0] * (len(bounds) + 1)  # the last one is +Inf
                    sums[kind] = 0.0
                per_bucket[bisect_left(bounds, seconds)] += 1  # le is inclusive: the first bound >= seconds
                sums[kind] += seconds
            limit = exchange.limit
            if limit is not None:
                limit_key = (tenant_id, limit.rule.name, limit.allowed)
                limits[limit_key] = limits.get(limit_key, 0) + 1
            cost = exchange.cost
            if cost:
                if tenant is not None and tenant.daily_budget is not None:
                    self.spenders.add(tenant_id)
                for part, micro in cost.items():
                    spend_key = (tenant_id, part)
                    spend[spend_key] = spend.get(spend_key, 0) + micro
        for (tenant_id, kind, decision, status), n in requests.items():
            # As the access line says (accesslog.line): nothing reached a client that left.
            status = 499 if decision == "client_closed" else status
            self._requests.labels(tenant_id, kind, decision or NO_DECISION, str(status)).inc(n)
        for kind, per_bucket in counts.items():
            histogram = self._durations.labels(kind)
            for index, n in enumerate(per_bucket):
                if n:
                    histogram._buckets[index].inc(n)
            histogram._sum.inc(sums[kind])
        for (tenant_id, bucket, allowed), n in limits.items():
            self._limit_decisions.labels(tenant_id, bucket, "true" if allowed else "false").inc(n)
        for (tenant_id, part), micro in spend.items():
            self._spend.labels(tenant_id, part).inc(to_usd(micro))

    async def scrape(self) -> bytes:
        """render(), in a worker thread: at thousands of tenants the text is megabytes and took
        0.25-0.5 s, which on the loop would stall every webhook. Scrapes that come while one is
        being rendered share its text (a dashboard's and Prometheus's at once render once)."""
        if self._rendering is None:
            if self._instances is not None:
                self.live_instances.set(self._instances())  # read on the loop: its state lives here
            rendering = self._rendering = asyncio.ensure_future(asyncio.to_thread(self._render))
            rendering.add_done_callback(self._rendered)
        return await asyncio.shield(self._rendering)

    def _rendered(self, future: asyncio.Future[bytes]) -> None:
        self._rendering = None
        if not future.cancelled():
            future.exception()  # retrieved: every scrape waiting may have gone (asyncio would log it)

    def render(self) -> bytes:
        """The exposition text: this process's metrics, or with --workers every worker's summed."""
        if self._instances is not None:
            self.live_instances.set(self._instances())
        return self._render()

    def _render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as prometheus_client's multiprocess docs ask: the collector
        # reads every worker's files, and this process's own metrics are among them.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def _value(child: object) -> float:
    """A gauge child's value, in-process mode (prometheus_client keeps it in `_value`)."""
    value: float = child._value.get()  # type: ignore[attr-defined]
    return value


@contextlib.contextmanager
def shared_across_processes() -> Iterator[str]:
    """A fresh PROMETHEUS_MULTIPROC_DIR in the environment while worker processes run; removed after.

    Set before the workers are spawned: each imports prometheus_client anew and picks mmap values
    from it. Fresh each run: files left by an earlier run would add its dead workers' counts.
    This process keeps the values it chose at its own import (this module's importers include
    gateway.cli), so the supervisor's start-up check writes no file here."""
    directory = tempfile.mkdtemp(prefix="switchyard-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def process_exited(pid: int, directory: str) -> None:
    """Drop a worker that exited from the live-mode gauges; its counters keep counting in the sum."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
