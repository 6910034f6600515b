"""RFC 6455 WebSocket framing, sans-io: what the Media Streams relay needs to carry frames
between two sockets it frames itself (no extensions are ever negotiated, so RSV bits are 0).

Why not aiohttp's WebSocket objects for the relay: through them every frame is a message object,
a queue, a future and a task switch on each side (measured: the bridge spent more of its time
in aiohttp's per-message machinery than in the socket calls). Framed here, a frame read is
checked and written on in the same callback, and a frame whose text is not changed is written
on as the very bytes that came in: Twilio's frames are masked (a client's) and go to the runtime
as a client's frame, masked with Twilio's own random key; the runtime's are unmasked (a
server's) and go to Twilio as a server's frame.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from typing import NamedTuple

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005  # never sent: a close frame without a code reads as this
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_LEN2 = struct.Struct("!BBH")
_LEN8 = struct.Struct("!BBQ")
_CLOSE = struct.Struct("!H")
_MAX_CONTROL = 125  # a control frame's payload, at most (§5.5)


class ProtocolError(Exception):
    """The peer broke the framing; `code` is the close code to fail the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Frame(NamedTuple):
    """One frame: FIN, opcode, payload (unmasked) and the frame's bytes exactly as received."""

    fin: bool
    opcode: int
    payload: bytes
    raw: bytes


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")  # noqa: S324 - the protocol's hash


def valid_key(key: str | None) -> bool:
    """A client's Sec-WebSocket-Key: base64 of 16 bytes."""
    if not key or len(key) != 24 or not key.isascii():
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def new_key() -> str:
    """A client's Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def unmask(key: bytes, data: bytes) -> bytes:
    """XOR with the 4-byte key, as one big integer: ~1 µs for a media frame's 380 bytes."""
    n = len(data)
    if n == 0 or key == b"\0\0\0\0":
        return data
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes, *, masked: bool) -> bytes:
    """One final frame; masked with a fresh random key when a client sends it (§5.3)."""
    n = len(payload)
    bit = 0x80 if masked else 0
    first = 0x80 | opcode
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = _LEN2.pack(first, bit | 126, n)
    else:
        head = _LEN8.pack(first, bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(key, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return _CLOSE.pack(code) + reason.encode("utf-8")[:123]


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005 if it has none)."""
    if len(payload) < 2:
        return CLOSE_NO_STATUS
    return int(_CLOSE.unpack_from(payload)[0])


class FrameReader:
    """Frames out of a byte stream, fed as it arrives; a partial frame waits for the rest.

    `masked`: whether the peer must mask (a client) or must not (a server), §5.1. Frames over
    `max_size` bytes, RSV bits, unknown opcodes and malformed control frames raise
    ProtocolError; fragments are returned as they are (the reader of frames puts them
    together, see Assembler)."""

    __slots__ = ("_buffer", "_masked", "_max_size")

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self._masked = masked
        self._max_size = max_size
        self._buffer = b""

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first & 0x70:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV bits set: no extension was negotiated")
            opcode = first & 0x0F
            masked = second & 0x80
            if bool(masked) != self._masked:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "masked frame from a server" if masked else "unmasked frame")
            n, head = second & 0x7F, 2
            if n == 126:
                if end - pos < 4:
                    break
                n, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "unknown opcode")
                if n > _MAX_CONTROL or not first & 0x80:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "malformed control frame")
            elif opcode > OP_BINARY:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "unknown opcode")
            if n > self._max_size:
                raise ProtocolError(CLOSE_TOO_BIG, "frame over the size limit")
            if masked:
                head += 4
            total = head + n
            if end - pos < total:
                break
            payload = buf[pos + head : pos + total]
            if masked:
                payload = unmask(buf[pos + head - 4 : pos + head], payload)
            raw = buf if pos == 0 and total == end else buf[pos : pos + total]
            frames.append(Frame(bool(first & 0x80), opcode, payload, raw))
            pos += total
        self._buffer = buf[pos:] if pos < end else b""
        return frames


class Assembler:
    """Data frames put together into messages (§5.4): returns (opcode, payload, raw) for a whole
    message, raw being the frame itself when it came in one frame (None when assembled), or None
    while a fragmented message is incomplete."""

    __slots__ = ("_max_size", "_opcode", "_parts", "_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, f: Frame) -> tuple[int, bytes, bytes | None] | None:
        if f.opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
        elif self._opcode is not None:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
        elif f.fin:
            return f.opcode, f.payload, f.raw
        else:
            self._opcode = f.opcode
        self._size += len(f.payload)
        if self._size > self._max_size:
            raise ProtocolError(CLOSE_TOO_BIG, "message over the size limit")
        self._parts.append(f.payload)
        if not f.fin:
            return None
        opcode, payload = self._opcode, b"".join(self._parts)
        self._opcode, self._parts, self._size = None, [], 0
        assert opcode is not None
        return opcode, payload, None
