"""Frames both ways between Twilio's WebSocket and the runtime's, through one StreamSession.

Each direction is one task that reads a frame, lets the session check and meter it, and sends
it on unchanged (only `start` was rewritten, before the relay began). Back-pressure is the
sockets' own: aiohttp's send waits for the transport to drain once its buffer passes the
writer's limit (64 KB), and its reader stops reading the socket once its queue passes 64 KB, so
a runtime that stops reading stalls the Twilio side's reads instead of growing our memory, and
the stall is noticed (`stall_after`) and ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal, Protocol

from aiohttp import WSMessage, WSMsgType

from gateway.protocol.media import MediaError, StreamSession
from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Reason = Literal[
    "stop",  # Twilio sent `stop` (the call or the stream ended)
    "twilio_closed",  # Twilio's socket closed without `stop`
    "twilio_silent",  # nothing from Twilio for silent_after (a half-open socket: it sends 50 frames/s)
    "runtime_closed",  # the runtime closed its socket
    "runtime_failed",  # the runtime's socket failed
    "max_duration",  # the route's max_duration_s passed
    "stalled",  # a send waited longer than stall_after (a side stopped reading)
    "shutdown",  # the gateway is stopping
]
STALL_AFTER = 5.0  # s: a side that reads nothing for this long is gone (audio is real time)
# s: Twilio sends the caller's audio every 20 ms, silence included, for as long as the stream is
# open; a socket that brings nothing for this long is half-open (its peer gone without a FIN),
# and would otherwise hold the tenant's slot until max_duration_s.
SILENT_AFTER = 10.0
SAMPLE_EVERY = 50  # one frame a second per direction at Twilio's 50 frames/s: the latency sample
CHECK_EVERY = 1.0  # s: how often the relay looks at the clock for duration and stalls


class Socket(Protocol):
    """What the relay needs of either side (aiohttp's server and client WebSockets both fit)."""

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    def __aiter__(self) -> Socket: ...

    async def __anext__(self) -> WSMessage: ...


class Relay:
    """One stream's two pumps and the watch over them; `run` returns why it ended."""

    def __init__(
        self,
        twilio: Socket,
        runtime: Socket,
        session: StreamSession,
        clock: Callable[[], float],
        metrics: Metrics,
        *,
        stall_after: float = STALL_AFTER,
        silent_after: float = SILENT_AFTER,
    ) -> None:
        self._twilio = twilio
        self._runtime = runtime
        self._session = session
        self._clock = clock
        self._metrics = metrics
        self._stall_after = stall_after
        self._silent_after = silent_after
        self._heard = clock()  # when the last frame came from Twilio
        # When each direction's send began, while one is waiting (None: not sending).
        self._sending: dict[str, float | None] = {"inbound": None, "outbound": None}
        self._stopped = asyncio.Event()
        self._stop_reason: Reason | None = None
        self.refused = {"inbound": 0, "outbound": 0}

    def stop(self, reason: Reason) -> None:
        """End the relay from outside (shutdown); `run` returns `reason`."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopped.set()

    async def run(self, end_by: float) -> Reason:
        """Relay until a side ends, a side stalls, `end_by` (on the clock) passes, or stop()."""
        pumps: set[asyncio.Task[Reason]] = {
            asyncio.create_task(self._from_twilio(), name="stream inbound"),
            asyncio.create_task(self._from_runtime(), name="stream outbound"),
        }
        stopped: asyncio.Task[bool] = asyncio.create_task(self._stopped.wait())
        reason: Reason | None = None
        try:
            while reason is None:
                done, _ = await asyncio.wait({*pumps, stopped}, timeout=CHECK_EVERY, return_when="FIRST_COMPLETED")
                if stopped in done:
                    reason = self._stop_reason or "shutdown"
                    break
                for pump in pumps:
                    if pump in done:
                        reason = pump.result()
                        break
                if reason is not None:
                    break
                now = self._clock()
                if now >= end_by:
                    reason = "max_duration"
                elif any(since is not None and now - since > self._stall_after for since in self._sending.values()):
                    reason = "stalled"
                elif now - self._heard > self._silent_after:
                    reason = "twilio_silent"
        finally:
            stopped.cancel()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, stopped, return_exceptions=True)
        return reason

    async def _from_twilio(self) -> Reason:
        session, runtime, clock, sending = self._session, self._runtime, self._clock, self._sending
        n = 0
        async for message in self._twilio:
            kind, data = message.type, message.data
            if kind is not WSMsgType.TEXT:
                if kind is WSMsgType.ERROR:
                    return "twilio_closed"
                self._refuse("inbound")
                continue
            self._heard = now = clock()
            try:
                inbound = session.from_twilio(data, now)
            except MediaError as error:
                self._refuse("inbound", error)
                continue
            sending["inbound"] = now
            await runtime.send_str(inbound.forward)
            sending["inbound"] = None
            n += 1
            if n % SAMPLE_EVERY == 0:
                self._metrics.relay_latency.labels("inbound").observe(clock() - now)
            if inbound.event == "stop":
                return "stop"
        return "twilio_closed"

    async def _from_runtime(self) -> Reason:
        session, twilio, clock, sending = self._session, self._twilio, self._clock, self._sending
        n = 0
        try:
            async for message in self._runtime:
                kind, data = message.type, message.data
                if kind is not WSMsgType.TEXT:
                    if kind is WSMsgType.ERROR:
                        return "runtime_failed"
                    self._refuse("outbound")
                    continue
                now = clock()
                try:
                    outbound = session.from_runtime(data, now)
                except MediaError as error:
                    self._refuse("outbound", error)
                    continue
                sending["outbound"] = now
                try:
                    await twilio.send_str(outbound.forward)
                except ConnectionError:
                    return "twilio_closed"  # Twilio's side went, not the runtime's
                sending["outbound"] = None
                n += 1
                if n % SAMPLE_EVERY == 0:
                    self._metrics.relay_latency.labels("outbound").observe(clock() - now)
        except (ConnectionError, asyncio.IncompleteReadError):
            return "runtime_failed"
        return "runtime_closed"

    def _refuse(self, direction: str, error: MediaError | None = None) -> None:
        """A frame not relayed: counted; logged once per stream (never its content)."""
        self.refused[direction] += 1
        self._metrics.frames_dropped.labels(direction).inc()
        if self.refused[direction] == 1:
            reason = error.reason if error is not None else "not a text frame"
            start = self._session.start
            sid = start.stream_sid if start is not None else "-"
            log.warning("stream %s: a frame %s refused (%s)", sid, direction, reason)
