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
from gateway.limits.budget import FailoverLedger, utc_day
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.spans import SpanBuilder
from gateway.telemetry.tracing import SpanExporter
from gateway.telemetry.usage import COSTED, cost_of

log = logging.getLogger(__name__)

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
        """Cost, ledger, metrics and spans of a batch of ended requests."""
        observed = []
        adds: list[tuple[str, str, dict[str, int]]] = []
        spans: list[bytes] = []
        builder = self.spans if self.traced else None
        day = ""
        for end, method, raw_path, status, seconds, exchange in ended:
            tenant = exchange.tenant
            if tenant is not None and not tenant.prices.free and exchange.decision in COSTED:
                spent = exchange.cost = cost_of(exchange, tenant.prices)
                # What the handler charged against the budget is in the ledger already.
                rest = _minus(spent, exchange.charged) if exchange.charged else spent
                if rest:
                    day = day or utc_day(self.wall())
                    adds.append((tenant.id, day, rest))
            observed.append((status, seconds, exchange))
            if builder is not None:
                spans.extend(builder.build(end, method, raw_path, status, seconds, exchange))
        self.metrics.observe(observed)
        if spans and self.exporter is not None:
            self.exporter.submit(spans)
        if adds and self.ledger is not None:
            self._spawn(self.ledger.add(adds))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (at exit): the ledger is gone with the process anyway
            work.close()
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

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


def _minus(spent: dict[str, int], charged: dict[str, int]) -> dict[str, int]:
    """What was spent beyond what was charged, part by part (an answer from a call-out can carry
    more SMS segments than its estimate)."""
    return {part: left for part, micro in spent.items() if (left := micro - charged.get(part, 0)) > 0}
