"""Every stream the app is relaying: counted per tenant, and stopped together at shutdown."""

from __future__ import annotations

import asyncio

from gateway.bridge.relay import Reason, Relay
from gateway.telemetry.metrics import Metrics


class Streams:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open: dict[Relay, str] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def opened(self, tenant: str, relay: Relay) -> None:
        self._open[relay] = tenant
        self._idle.clear()
        self._metrics.streams_open.labels(tenant).inc()

    def closed(self, relay: Relay) -> None:
        tenant = self._open.pop(relay, None)
        if tenant is not None:
            self._metrics.streams_open.labels(tenant).dec()
        if not self._open:
            self._idle.set()

    def __len__(self) -> int:
        return len(self._open)

    async def stop_all(self, reason: Reason = "shutdown", within: float = 5.0) -> None:
        """End every relay (each closes its sockets: 1001 for a shutdown, so Twilio moves on to
        the fallback after </Connect>) and wait, up to `within`, for them to finish."""
        for relay in list(self._open):
            relay.stop(reason)
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            pass
