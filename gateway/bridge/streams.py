"""Every Media Stream the app holds open: counted per tenant, and stopped together at shutdown.

A stream is registered from its upgrade, not from its relay: a shutdown that finds one still
waiting for `start`, or connecting to its runtime, closes it with 1001 too (Twilio then moves on
to the fallback verb) rather than leaving it to be cut when the server stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from gateway.bridge.relay import Reason, Relay
from gateway.telemetry.metrics import Metrics

T = TypeVar("T")


class Stopped(Exception):
    """The stream was stopped (shutdown) while it waited for something."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


class Stream:
    """One open stream's handle: how the registry reaches it, whatever it is doing."""

    __slots__ = ("_stopped", "reason", "relay", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.relay: Relay | None = None
        self.reason: Reason | None = None
        self._stopped = asyncio.Event()

    def stop(self, reason: Reason) -> None:
        if self.reason is None:
            self.reason = reason
        self._stopped.set()
        if self.relay is not None:
            self.relay.stop(self.reason)

    def relaying(self, relay: Relay) -> None:
        """From now on a stop ends this relay (at once, if the stream was stopped already)."""
        self.relay = relay
        if self.reason is not None:
            relay.stop(self.reason)

    async def until(self, awaitable: Awaitable[T]) -> T:
        """Await, unless the stream is stopped first: Stopped then, the awaitable cancelled."""
        if self.reason is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise Stopped(self.reason)
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled() and self.reason is not None:
            raise Stopped(self.reason)
        return work.result()  # (cancelled by someone else: CancelledError, as they meant)


class Streams:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._open: set[Stream] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def open(self, tenant: str) -> Stream:
        stream = Stream(tenant)
        self._open.add(stream)
        self._idle.clear()
        self._metrics.streams_open.labels(tenant).inc()
        return stream

    def close(self, stream: Stream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            self._metrics.streams_open.labels(stream.tenant).dec()
        if not self._open:
            self._idle.set()

    def __len__(self) -> int:
        return len(self._open)

    async def drained(self) -> None:
        """Return once no stream is open (each has given its slot back and settled its hold)."""
        await self._idle.wait()

    async def stop_all(self, reason: Reason = "shutdown", within: float = 5.0) -> None:
        """End every stream (each closes its sockets: 1001 for a shutdown, so Twilio moves on to
        the fallback after </Connect>) and wait, up to `within`, for them to finish."""
        for stream in list(self._open):
            stream.stop(reason)
        try:
            async with asyncio.timeout(within):
                await self.drained()
        except TimeoutError:
            pass
