"""A bridged stream's side, on an in-memory transport: what it answers by itself (pings, a bad
frame's close code), how messages reach the relay (whole, with their bytes, or queued before it
runs, reading paused past the queue's limit), and the closing handshake."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.bridge.side import PONG_LIMIT, QUEUE_LIMIT, Side, xor
from gateway.protocol.websocket import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    close_code,
    close_payload,
    frame,
    unmask,
)
from tests.support.fuzz import FUZZ, bounded, near_frames


@dataclass
class MemoryTransport:
    """What Side needs of a transport, kept in memory: written bytes, reading paused, closed."""

    written: bytearray = field(default_factory=bytearray)
    side: Side | None = None  # told the connection is gone when it is closed
    closing: bool = False
    aborted: bool = False
    paused: bool = False
    unsent: int = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        if self.side is not None and not self.unsent:
            self.side.lost(None)  # nothing left to send: the connection goes at once

    def abort(self) -> None:
        self.closing = self.aborted = True
        if self.side is not None:
            self.side.lost(None)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def frames(self, *, masked: bool) -> list[tuple[int, bytes]]:
        return [(f.opcode, f.payload) for f in FrameReader(masked=masked, max_size=1 << 20).feed(bytes(self.written))]


def _side(name: str, *, client: bool) -> tuple[Side, MemoryTransport]:
    transport = MemoryTransport()
    side = transport.side = Side(name, transport, client=client, max_size=64 * 1024)
    return side, transport


def _twilio() -> tuple[Side, MemoryTransport]:
    return _side("twilio", client=False)


def _runtime() -> tuple[Side, MemoryTransport]:
    return _side("runtime", client=True)


async def test_a_ping_is_answered_with_a_pong_framed_for_the_peer() -> None:
    """Twilio's ping gets an unmasked pong; the runtime's a masked one (we are its client)."""
    twilio, to_twilio = _twilio()
    twilio.feed(frame(OP_PING, b"hi", masked=True))
    assert to_twilio.frames(masked=False) == [(OP_PONG, b"hi")]
    runtime, to_runtime = _runtime()
    runtime.feed(frame(OP_PING, b"yo", masked=False))
    assert to_runtime.frames(masked=True) == [(OP_PONG, b"yo")]


async def test_pings_from_a_peer_that_does_not_read_go_unanswered() -> None:
    """A peer that pings and never reads cannot grow our buffer with pongs: past PONG_LIMIT
    unsent bytes, its pings get none."""
    runtime, transport = _runtime()
    transport.unsent = PONG_LIMIT + 1
    runtime.feed(frame(OP_PING, b"x", masked=False) * 3)
    assert transport.written == b""


async def test_a_whole_message_inside_a_fragmented_one_fails_with_1002() -> None:
    """§5.4: a new data message may not start before a fragmented one ends, even as one frame."""
    runtime, transport = _runtime()
    got: list[str | None] = []
    runtime.on_text = lambda text, _payload, _raw: got.append(text)
    runtime.feed(bytes([0x01, 0x01]) + b"a" + frame(OP_TEXT, b"b", masked=False))
    ((_, payload),) = transport.frames(masked=True)
    assert close_code(payload) == CLOSE_PROTOCOL_ERROR and got == [] and runtime.end == "failed"


async def test_a_payload_sent_on_is_masked_with_a_fresh_key_each_time() -> None:
    """A payload sent to the runtime is framed anew, masked with a key of ours that differs
    frame to frame (§5.3), and reads back as the same text."""
    runtime, transport = _runtime()
    runtime.send_utf8(b'{"event":"media"}')
    runtime.send_utf8(b'{"event":"media"}')
    assert transport.frames(masked=True) == [(OP_TEXT, b'{"event":"media"}')] * 2
    first_key, second_key = bytes(transport.written[2:6]), bytes(transport.written[25:29])
    assert first_key != second_key


async def test_the_relay_gets_each_message_with_its_frame_or_none_when_assembled() -> None:
    """A whole text frame comes with its bytes (forwarded as they are); a fragmented one whole,
    without (framed anew); a binary one as None text (refused by the relay)."""
    runtime, _ = _runtime()
    got: list[tuple[str | None, bytes | None]] = []
    runtime.on_text = lambda text, _payload, raw: got.append((text, raw))
    whole = frame(OP_TEXT, b'{"event":"clear"}', masked=False)
    runtime.feed(whole + bytes([0x01, 0x02]) + b"ab" + bytes([0x80, 0x01]) + b"c")
    runtime.feed(frame(OP_BINARY, b"\x00", masked=False))
    assert got == [('{"event":"clear"}', whole), ("abc", None), (None, frame(OP_BINARY, b"\x00", masked=False))]


async def test_text_that_is_not_utf8_fails_the_connection_with_1007() -> None:
    """§8.1: invalid UTF-8 in a text message fails the connection (1007) and ends the side."""
    twilio, transport = _twilio()
    ended: list[str | None] = []
    twilio.on_end = lambda side: ended.append(side.end)
    twilio.feed(frame(OP_TEXT, b"\xff\xfe", masked=True))
    ((opcode, payload),) = transport.frames(masked=False)
    assert opcode == OP_CLOSE and close_code(payload) == CLOSE_INVALID_DATA
    assert ended == ["failed"] and transport.closing


async def test_an_unmasked_frame_from_twilio_fails_with_1002() -> None:
    """A client's frames must be masked (§5.1): an unmasked one is a protocol error."""
    twilio, transport = _twilio()
    twilio.feed(frame(OP_TEXT, b"{}", masked=False))
    ((_, payload),) = transport.frames(masked=False)
    assert close_code(payload) == CLOSE_PROTOCOL_ERROR and twilio.end == "failed"


async def test_before_the_relay_messages_queue_and_reading_pauses_past_the_limit() -> None:
    """Until the relay runs, messages wait in order; past QUEUE_LIMIT bytes the socket's reading
    pauses (the kernel holds the rest), and taking the queue resumes it."""
    twilio, transport = _twilio()
    text = "x" * 1000
    n = QUEUE_LIMIT // 1000 + 2
    for _ in range(n):
        twilio.feed(frame(OP_TEXT, text.encode(), masked=True))
    assert transport.paused
    assert await twilio.receive() == text
    queued = twilio.take_queued()
    assert len(queued) == n - 1 and not transport.paused


async def test_receive_returns_none_once_the_peer_closed() -> None:
    """A peer's close frame ends the side: receive() drains what came before, then None."""
    twilio, _ = _twilio()
    twilio.feed(frame(OP_TEXT, b"a", masked=True) + frame(OP_CLOSE, close_payload(1000), masked=True))
    assert twilio.end == "closed" and twilio.peer_code == 1000
    assert await twilio.receive() == "a"
    assert await twilio.receive() is None


async def test_closing_after_the_peers_close_answers_it_and_closes_at_once() -> None:
    """The peer closed first: our close frame answers it, and the connection is closed without
    waiting for anything more."""
    runtime, transport = _runtime()
    runtime.feed(frame(OP_CLOSE, close_payload(1001), masked=False))
    await runtime.close(1000, within=60)  # returns at once: nothing to wait for
    ((opcode, payload),) = transport.frames(masked=True)
    assert opcode == OP_CLOSE and close_code(payload) == 1000
    assert transport.closing and not transport.aborted


@given(st.binary(min_size=4, max_size=4), st.binary(max_size=1000))
def test_the_fast_masking_is_the_pure_one(key: bytes, data: bytes) -> None:
    """aiohttp's C loop, used on the sockets, masks exactly as protocol/websocket.py's XOR."""
    assert xor(key, data) == unmask(key, data)


@FUZZ
@given(st.lists(st.one_of(near_frames(), st.binary(max_size=40)), max_size=8), st.booleans())
@example([bytes([0x81, 0x82]) + b"kkkk" + unmask(b"kkkk", b"\xed\xa0")], False)  # a lone surrogate's UTF-8
async def test_any_bytes_from_a_peer_are_read_or_end_the_side(reads: list[bytes], client: bool) -> None:
    """A side fed any bytes in any reads never raises: it queues messages, or ends (failed: with a close frame sent)."""
    side, transport = _side("peer", client=client)
    with bounded():
        for data in reads:
            side.feed(data)
    assert all(isinstance(payload, bytes) for _, payload, _ in side.take_queued())
    assert side.end in (None, "closed", "failed")
    if side.end == "failed":
        assert transport.closing and transport.frames(masked=client)[-1][0] == OP_CLOSE
