"""Frames both ways between Twilio's WebSocket and the runtime's, through one StreamSession.

Each frame is handled in the callback that read it (bridge/side.py): the session checks and
meters it, and it is written on at once, its text never decoded into JSON and encoded again
(only `start` is rewritten, before the relay began): the runtime's frames go to Twilio as the
bytes that came in (a server's frames are unmasked), Twilio's go to the runtime with the same
payload masked with a key of ours (a client must choose its own, RFC 6455 §5.3). No task, queue
or future per frame: through aiohttp's WebSocket objects those cost more than the socket calls
themselves.

Back-pressure: when the side a direction writes to holds more than HIGH_WATER bytes its kernel
has not taken (its peer stopped reading), reading from the other side pauses until it drains
below LOW_WATER, so a runtime that stops reading backs Twilio's frames up in the kernel's buffers
and Twilio's, not in our memory; a direction held back for `stall_after` ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

from gateway.bridge.side import Side
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
    "stalled",  # a side took nothing for stall_after (it stopped reading)
    "shutdown",  # the gateway is stopping
]
Direction = Literal["inbound", "outbound"]  # inbound: Twilio -> runtime; outbound: runtime -> Twilio
STALL_AFTER = 5.0  # s: a side that reads nothing for this long is gone (audio is real time)
# s: Twilio sends the caller's audio every 20 ms, silence included, for as long as the stream is
# open; a socket that brings nothing for this long is half-open (its peer gone without a FIN),
# and would otherwise hold the tenant's slot until max_duration_s.
SILENT_AFTER = 10.0
SAMPLE_EVERY = 50  # one frame a second per direction at Twilio's 50 frames/s: the latency sample
CHECK_EVERY = 1.0  # s: how often the relay looks at the clock for duration, stalls and silence
HIGH_WATER = 64 * 1024  # bytes unsent to a side before reading from the other pauses
LOW_WATER = 16 * 1024  # ... and below which it resumes
DRAIN_POLL = 0.01  # s: how often a held-back direction looks whether its side has drained


class Relay:
    """One stream's two directions and the watch over them; `run` returns why it ended."""

    def __init__(
        self,
        twilio: Side,
        runtime: Side,
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
        self._stall_after = stall_after
        self._silent_after = silent_after
        self._heard = clock()  # when the last frame came from Twilio
        # Since when each direction has been held back (its source paused), on the clock.
        self._held: dict[Direction, float | None] = {"inbound": None, "outbound": None}
        self._poll: asyncio.TimerHandle | None = None
        self._over = asyncio.Event()
        self._reason: Reason | None = None
        self._frames = {"inbound": 0, "outbound": 0}
        directions = ("inbound", "outbound")
        self._latency = {d: metrics.relay_latency.labels(d) for d in directions}
        self._dropped = {d: metrics.frames_dropped.labels(d) for d in directions}
        self.refused = {"inbound": 0, "outbound": 0}

    def stop(self, reason: Reason) -> None:
        """End the relay from outside (shutdown); `run` returns `reason`."""
        self._end(reason)

    def held_back(self, direction: Direction) -> bool:
        """Whether a direction is waiting for its side to drain."""
        return self._held[direction] is not None

    def _end(self, reason: Reason) -> None:
        if self._reason is None:
            self._reason = reason
        # Nothing more is relayed, not even the rest of the batch being read.
        self._twilio.on_text = self._runtime.on_text = None
        self._over.set()

    async def run(self, end_by: float) -> Reason:
        """Relay until a side ends, a side stalls, `end_by` (on the clock) passes, or stop()."""
        twilio, runtime = self._twilio, self._runtime
        twilio.on_end = runtime.on_end = self._side_ended
        try:
            # What came before the relay began goes first, in order; then each frame as it comes.
            for text, payload, raw in twilio.take_queued():
                if self._reason is None:
                    self._from_twilio(text, payload, raw)
            for text, payload, raw in runtime.take_queued():
                if self._reason is None:
                    self._from_runtime(text, payload, raw)
            if self._reason is None:
                twilio.on_text, runtime.on_text = self._from_twilio, self._from_runtime
            for side in (twilio, runtime):
                if side.end is not None:
                    self._side_ended(side)
            while self._reason is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):
                        await self._over.wait()
                if self._reason is not None:
                    break
                now = self._clock()
                if now >= end_by:
                    self._end("max_duration")
                elif any(since is not None and now - since > self._stall_after for since in self._held.values()):
                    self._end("stalled")
                elif now - self._heard > self._silent_after:
                    self._end("twilio_silent")
        finally:
            twilio.on_text = runtime.on_text = None
            twilio.on_end = runtime.on_end = None
            if self._poll is not None:
                self._poll.cancel()
        assert self._reason is not None
        return self._reason

    def _side_ended(self, side: Side) -> None:
        if side is self._twilio:
            self._end("twilio_closed")
        else:
            self._end("runtime_closed" if side.end == "closed" else "runtime_failed")

    def _from_twilio(self, text: str | None, payload: bytes, raw: bytes | None) -> None:
        self._heard = now = self._clock()
        if text is None:
            self._refuse("inbound")
            return
        try:
            inbound = self._session.from_twilio(text, now)
        except MediaError as error:
            self._refuse("inbound", error)
            return
        runtime = self._runtime
        if inbound.forward is text:
            runtime.send_utf8(payload)  # the same bytes, masked with a key of ours
        else:
            runtime.send_text(inbound.forward)
        if runtime.buffered() > HIGH_WATER:
            self._hold("inbound", now)
        n = self._frames["inbound"] = self._frames["inbound"] + 1
        if n % SAMPLE_EVERY == 0:
            self._latency["inbound"].observe(self._clock() - now)
        if inbound.event == "stop":
            self._end("stop")

    def _from_runtime(self, text: str | None, payload: bytes, raw: bytes | None) -> None:
        now = self._clock()
        if text is None:
            self._refuse("outbound")
            return
        try:
            self._session.from_runtime(text, now)  # forwarded unchanged: only checked and metered
        except MediaError as error:
            self._refuse("outbound", error)
            return
        twilio = self._twilio
        if raw is not None:
            twilio.write(raw)  # a server's frame (unmasked): Twilio may be sent it as it came
        else:
            twilio.send_utf8(payload)  # assembled from fragments: one frame of ours
        if twilio.buffered() > HIGH_WATER:
            self._hold("outbound", now)
        n = self._frames["outbound"] = self._frames["outbound"] + 1
        if n % SAMPLE_EVERY == 0:
            self._latency["outbound"].observe(self._clock() - now)

    def _hold(self, direction: Direction, now: float) -> None:
        """The side `direction` writes to is full: stop reading its source until it drains."""
        if self._held[direction] is None:
            self._held[direction] = now
            (self._twilio if direction == "inbound" else self._runtime).pause_reading()
            if self._poll is None:
                self._poll = asyncio.get_running_loop().call_later(DRAIN_POLL, self._drained)

    def _drained(self) -> None:
        self._poll = None
        ways: tuple[tuple[Direction, Side, Side], ...] = (
            ("inbound", self._runtime, self._twilio),
            ("outbound", self._twilio, self._runtime),
        )
        for direction, sink, source in ways:
            if self._held[direction] is not None and sink.buffered() <= LOW_WATER:
                self._held[direction] = None
                source.resume_reading()
        if any(since is not None for since in self._held.values()) and self._reason is None:
            self._poll = asyncio.get_running_loop().call_later(DRAIN_POLL, self._drained)

    def _refuse(self, direction: Direction, error: MediaError | None = None) -> None:
        """A frame not relayed: counted; logged once per stream (never its content)."""
        self.refused[direction] += 1
        self._dropped[direction].inc()
        if self.refused[direction] == 1:
            reason = error.reason if error is not None else "not a text frame"
            start = self._session.start
            sid = start.stream_sid if start is not None else "-"
            log.warning("stream %s: a frame %s refused (%s)", sid, direction, reason)
