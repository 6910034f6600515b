"""What an app does with its requests' records once they end, in batches: cost and the spend
ledger, metrics, spans (DESIGN §2 step 8).

The access log's batch (accesslog.py) hands each app's ended exchanges here every few
milliseconds, so none of this runs on a request's own path: a static answer pays for one tuple.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence

from gateway.exchange import Exchange
from gateway.limits.budget import utc_day
from gateway.limits.budget_failover import FailoverLedger
from gateway.telemetry.cost import Prices
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.spans import SpanBuilder
from gateway.telemetry.tracing import SpanExporter
from gateway.telemetry.usage import COSTED, cost_of, inbound_cost, once_id

log = logging.getLogger(__name__)

Booking = tuple[str, str, dict[str, int], str | None]
"""What the ledger adds: (tenant, UTC day, cost parts in micro-dollars, book-once id | None)."""

Ended = tuple[float, str, str, int, float, Exchange]
"""One ended request: (wall-clock end, method, raw path, status as sent, seconds, exchange)."""


class Recorder:
    def __init__(
        self,
        metrics: Metrics,
        ledger: FailoverLedger | None = None,
        spans: SpanBuilder | None = None,
        exporter: SpanExporter | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.wall = wall  # the UTC day spend is booked to, read once per batch
        self.ledger = ledger
        self.spans = spans
        self.exporter = exporter
        self.traced = spans is not None and exporter is not None
        self._pending: set[asyncio.Task[None]] = set()

    def consume(self, ended: Sequence[Ended]) -> None:
        """Cost and the ledger first (money must not wait on anything else), then metrics and
        spans; one entry failing to cost or to encode loses only its own part."""
        adds: list[Booking] = []
        day = ""
        for entry in ended:
            exchange = entry[5]
            tenant = exchange.tenant
            if tenant is None or tenant.prices.free or not exchange.verified:
                continue
            try:
                booking = _booking(exchange, tenant.prices)
            except Exception:
                log.exception("tenant %s: the cost of a %s request could not be worked out", tenant.id, exchange.kind)
                continue
            if booking is not None:
                day = day or utc_day(self.wall())
                adds.append((tenant.id, day, *booking))
        if adds and self.ledger is not None:
            self._spawn(self.ledger.add(adds))
        self.metrics.observe([(entry[3], entry[4], entry[5]) for entry in ended])
        if self.traced and self.spans is not None and self.exporter is not None:
            if not self.exporter.accepting:  # the collector is down: count them, make none
                self.exporter.discard(len(ended))
                return
            spans: list[bytes] = []
            build = self.spans.build
            for end, method, raw_path, status, seconds, exchange in ended:
                try:
                    spans.extend(build(end, method, raw_path, status, seconds, exchange))
                except Exception:
                    log.exception("a %s request's span could not be encoded", exchange.kind)
            if spans:
                self.exporter.submit(spans)

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (at exit): the ledger is gone with the process anyway
            work.close()
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settled(self) -> None:
        """Until the ledger writes already begun are done (tests, and `close`)."""
        if self._pending:
            await asyncio.wait(set(self._pending))

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound on waiting for others' tasks
        """Wait for the ledger writes already begun (a shutdown must not lose spend). Requests
        that end after this (a test's stragglers) still count in the metrics, nothing else."""
        self.ledger = None
        self.exporter = None
        self.traced = False
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d spend ledger write(s) did not finish within %gs", len(late), timeout)


def _booking(exchange: Exchange, prices: Prices) -> tuple[dict[str, int], str | None] | None:
    """What the end of this request adds to the ledger, and its book-once id; None for nothing.

    Sets the exchange's cost (the span, the metrics and the access line read it)."""
    if exchange.retry == "replay":
        return None  # Twilio's retry of a request already answered (and booked)
    if exchange.decision in COSTED:
        spent = exchange.cost = cost_of(exchange, prices)
    else:
        # Refused (over a limit, over budget): Twilio bills an inbound text all the same.
        spent = exchange.cost = inbound_cost(exchange, prices)
    # What the handler charged against the budget is in the ledger already.
    rest = _minus(spent, exchange.charged) if exchange.charged else spent
    if not rest:
        return None
    return rest, once_id(exchange)


def _minus(spent: dict[str, int], charged: dict[str, int]) -> dict[str, int]:
    """What was spent beyond what was charged, part by part (an answer from a call-out can carry
    more SMS segments than its estimate)."""
    return {part: left for part, micro in spent.items() if (left := micro - charged.get(part, 0)) > 0}
