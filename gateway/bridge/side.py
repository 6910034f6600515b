"""One end of a bridged stream (Twilio's socket, or the runtime's), framed by the gateway itself
(protocol/websocket.py) on the connection's transport once its upgrade is done.

Before the relay runs, whole text messages wait in a small queue (`receive`, `take_queued`);
while it runs, each one is handed to `on_text` in the callback that read it. Pings are answered
here, a peer's close frame ends the side, and `close` runs the closing handshake (bounded).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

from gateway.protocol.websocket import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Assembler,
    FrameReader,
    ProtocolError,
    close_code,
    close_payload,
    frame,
    unmask,
)

log = logging.getLogger(__name__)

try:
    # aiohttp's own C loop for masking (its WebSocket writer uses it); not re-exported, so
    # guarded: measured 0.38 µs for a 380-byte media frame against 1.6 µs for the pure XOR.
    from aiohttp._websocket.helpers import websocket_mask as _mask_in_place

    def xor(key: bytes, data: bytes) -> bytes:
        buffer = bytearray(data)
        _mask_in_place(key, buffer)
        return bytes(buffer)

except ImportError:  # pragma: no cover - another aiohttp layout: the pure one
    xor = unmask

End = Literal["closed", "lost", "failed"]  # a close frame came; the connection dropped; bad framing
QUEUE_LIMIT = 256 * 1024  # bytes of messages held before the relay runs; past it, reading pauses
PONG_LIMIT = 64 * 1024  # bytes unsent to a peer past which its pings go unanswered (§5.5.2 allows it)

# A message: its text (None: not text), its payload, and its frame's bytes as received (None:
# assembled from fragments, so it must be framed anew to be sent on).
OnText = Callable[[str | None, bytes, bytes | None], None]


class Transport(Protocol):
    """What a side needs of its connection (asyncio's and uvloop's TCP/TLS transports)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_write_buffer_size(self) -> int: ...


class Side:
    """A WebSocket whose frames this process reads and writes; `client`: we opened it (our
    frames are masked, the peer's must not be)."""

    def __init__(self, name: str, transport: Transport, *, client: bool, max_size: int) -> None:
        self.name = name
        self._transport = transport
        self._client = client
        self._reader = FrameReader(masked=not client, max_size=max_size, xor=xor)
        self._assembler = Assembler(max_size)
        self._queue: deque[tuple[str | None, bytes, bytes | None]] = deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._held_by_queue = False
        self._close_sent = False
        self._closing: asyncio.Future[None] | None = None  # while close() waits for the peer's close
        self._gone = asyncio.get_running_loop().create_future()
        self.on_text: OnText | None = None
        self.on_end: Callable[[Side], None] | None = None
        self.end: End | None = None
        self.peer_code: int | None = None  # the code of the peer's close frame
        self.error: str | None = None  # why a side failed (a protocol error), short

    # --- reading (called by the transport's protocol)

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            return
        reader = self._reader
        for f in reader.feed(data):
            opcode = f.opcode
            if opcode == OP_TEXT and f.fin and not self._assembler.open:  # nearly every frame
                self._message(OP_TEXT, f.payload, f.raw)
            elif opcode < OP_CLOSE:
                try:
                    whole = self._assembler.add(f)
                except ProtocolError as error:
                    self._fail(error.code, error.reason)
                    return
                if whole is not None:
                    self._message(*whole)
            elif opcode == OP_PING:
                # A peer that pings and never reads would grow our buffer with pongs: past
                # PONG_LIMIT unsent, its pings go unanswered.
                if self.buffered() <= PONG_LIMIT:
                    self.write(frame(OP_PONG, f.payload, masked=self._client, xor=xor))
            elif opcode == OP_CLOSE:
                try:
                    self.peer_code = close_code(f.payload)
                except ProtocolError as error:
                    self._fail(error.code, error.reason)
                    return
                self._ended("closed")
                if self._closing is not None and not self._closing.done():
                    self._closing.set_result(None)
            # a pong: nothing to do (we send no pings: silence is watched by the relay instead)
            if self.end is not None:
                return
        if reader.error is not None:
            self._fail(reader.error.code, reader.error.reason)

    def _message(self, opcode: int, payload: bytes, raw: bytes | None) -> None:
        text: str | None = None
        if opcode == OP_TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "text not UTF-8")  # RFC 6455 §8.1
                return
        elif opcode != OP_BINARY:
            return
        if self._close_sent:
            return  # closing: what still comes is read only to reach the peer's close frame
        on_text = self.on_text
        if on_text is not None:
            try:
                on_text(text, payload, raw)
            except Exception:
                # Called from the transport's data_received: let a bug end this stream, not the
                # connection's protocol (nor go unlogged).
                log.exception("a %s frame could not be relayed", self.name)
                self._fail(CLOSE_INTERNAL_ERROR, "internal error")
            return
        self._queue.append((text, payload, raw))
        self._queued += len(payload)
        if self._queued > QUEUE_LIMIT and not self._held_by_queue:
            self._held_by_queue = True
            self.pause_reading()
        self._wake()

    def lost(self, exc: BaseException | None) -> None:
        """The connection is gone (the transport's connection_lost, or its EOF)."""
        self._ended("lost")
        if not self._gone.done():
            self._gone.set_result(None)
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        """The peer broke the protocol: fail the connection with `code` (§7.1.7)."""
        self.error = reason
        self._send_close(code)
        self._ended("failed")
        self._transport.close()

    def _ended(self, end: End) -> None:
        if self.end is None:
            self.end = end
            self._wake()
            if self.on_end is not None:
                self.on_end(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- before the relay

    async def receive(self) -> str | None:
        """The next text message (other messages are skipped); None once the side has ended."""
        while True:
            while self._queue:
                text, payload, _ = self._queue.popleft()
                self._queued -= len(payload)
                self._release_queue()
                if text is not None:
                    return text
            if self.end is not None:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take_queued(self) -> list[tuple[str | None, bytes, bytes | None]]:
        """What came before the relay began, in order (the relay handles it first)."""
        queued = list(self._queue)
        self._queue.clear()
        self._queued = 0
        self._release_queue()
        return queued

    def _release_queue(self) -> None:
        if self._held_by_queue and self._queued <= QUEUE_LIMIT // 2:
            self._held_by_queue = False
            self.resume_reading()

    # --- writing

    def send_text(self, text: str) -> None:
        self.write(frame(OP_TEXT, text.encode("utf-8"), masked=self._client, xor=xor))

    def send_utf8(self, payload: bytes) -> None:
        """A text message already encoded (a payload read from the other side), framed for this
        peer: masked with a key of our own when we are its client (§5.3), never the key the
        other side's sender chose."""
        self.write(frame(OP_TEXT, payload, masked=self._client, xor=xor))

    def write(self, data: bytes) -> None:
        """Bytes onto the connection; nothing once it is closing (its end is noticed by then)."""
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel: what a peer that stops reading costs us."""
        return self._transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        if not self._paused and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    @property
    def done(self) -> bool:
        """The connection is gone, or closing."""
        return self._gone.done() or self._transport.is_closing()

    def _send_close(self, code: int) -> None:
        if not self._close_sent:
            self._close_sent = True
            self.write(frame(OP_CLOSE, close_payload(code), masked=self._client, xor=xor))

    async def close(self, code: int, within: float) -> None:
        """The closing handshake (§7.1.2): our close frame with `code`, the peer's close frame,
        then the connection closed and gone, all within `within` seconds: a peer that reads
        nothing cannot even take our close frame, and is then cut."""
        self.on_text = None
        if self._gone.done():
            return
        self._send_close(code)
        if self.peer_code is None and self.end is None:
            self._queue.clear()
            self._held_by_queue = False
            self.resume_reading()  # the peer's close frame must be read, whatever was paused
            self._closing = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within):
                    await self._closing
            except TimeoutError:
                log.info("a %s socket did not answer our close frame within %.1fs: cut", self.name, within)
                self._transport.abort()
                return
        # close() sends what is still buffered first: a peer that reads nothing would keep the
        # connection open for ever, so it is cut if it has not gone within the bound.
        self._transport.close()
        if not self._gone.done():
            asyncio.get_running_loop().call_later(within, self._cut)

    def _cut(self) -> None:
        if not self._gone.done():
            log.info("a %s socket was still sending after its close: cut", self.name)
            self._transport.abort()
