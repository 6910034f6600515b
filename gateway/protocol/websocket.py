"""RFC 6455 WebSocket framing, sans-io: what the Media Streams relay needs to carry frames
between two sockets it frames itself (no extensions are ever negotiated, so RSV bits are 0).

Why not aiohttp's WebSocket objects for the relay: through them every frame is a message object,
a queue, a future and a task switch on each side (measured: the bridge spent more of its time
in aiohttp's per-message machinery than in the socket calls). Framed here, a frame read is
checked and written on in the same callback, its payload never re-encoded: the runtime's
frames (a server's, unmasked) go to Twilio as the very bytes that came in; Twilio's (a
client's, masked) go to the runtime with the same payload masked with a key of ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Callable
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


Xor = Callable[[bytes, bytes], bytes]
"""Masking (§5.3): the data XORed with the 4-byte key repeated. The pure one is `unmask`; the
I/O side passes a faster one in (bridge/side.py)."""


def unmask(key: bytes, data: bytes) -> bytes:
    """XOR with the 4-byte key, as one big integer: ~1.6 µs for a media frame's 380 bytes."""
    n = len(data)
    if n == 0 or key == b"\0\0\0\0":
        return data
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


class _Keys:
    """Masking keys from the OS's strong entropy (§5.3 asks for it), drawn 4 KB at a time: one
    getrandom call per 1024 frames instead of one per frame."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 4
        return self._pool[at : at + 4]


_keys = _Keys()


def frame(opcode: int, payload: bytes, *, masked: bool, xor: Xor = unmask) -> bytes:
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
    key = _keys.next()
    return head + key + xor(key, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    return _CLOSE.pack(code) + reason.encode("utf-8")[:123]


def close_code(payload: bytes) -> int:
    """The code of a close frame's payload (1005 if it has none); ProtocolError for a payload
    §5.5.1 and §7.4 do not allow: one byte, a code no endpoint may send, a reason not UTF-8."""
    if not payload:
        return CLOSE_NO_STATUS
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a close frame of one byte")
    code = int(_CLOSE.unpack_from(payload)[0])
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a close code no endpoint may send")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "a close reason not UTF-8") from None
    return code


class FrameReader:
    """Frames out of a byte stream, fed as it arrives; a partial frame waits for the rest.

    `masked`: whether the peer must mask (a client) or must not (a server), §5.1. Frames over
    `max_size` bytes, RSV bits, unknown opcodes and malformed control frames break the stream:
    `feed` returns the frames before the fault and sets `error` (the ProtocolError to fail the
    connection with), and reads nothing more. Fragments are returned as they are (Assembler
    puts them together)."""

    __slots__ = ("_have", "_masked", "_max_size", "_need", "_parts", "_xor", "error")

    def __init__(self, *, masked: bool, max_size: int, xor: Xor = unmask) -> None:
        self._masked = masked
        self._xor = xor
        self._max_size = max_size
        # A partial frame's bytes so far, and how many it needs before parsing is worth trying:
        # a large frame trickling in is joined once, not copied again on every read.
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self.error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return self._have

    def feed(self, data: bytes) -> list[Frame]:
        if self.error is not None:
            return []
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts, self._have = [], 0
        else:
            buf = data
        frames: list[Frame] = []
        pos, end = 0, len(buf)
        need = 2
        try:
            while end - pos >= 2:
                first, second = buf[pos], buf[pos + 1]
                if first & 0x70:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "RSV bits set: no extension was negotiated")
                opcode = first & 0x0F
                masked = second & 0x80
                if bool(masked) != self._masked:
                    raise ProtocolError(
                        CLOSE_PROTOCOL_ERROR, "masked frame from a server" if masked else "unmasked frame"
                    )
                n, head = second & 0x7F, 2
                if n == 126:
                    if end - pos < 4:
                        need = 4
                        break
                    n, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
                elif n == 127:
                    if end - pos < 10:
                        need = 10
                        break
                    n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                    if n >> 63:
                        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "a 64-bit length with its top bit set")
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
                    need = total
                    break
                payload = buf[pos + head : pos + total]
                if masked:
                    payload = self._xor(buf[pos + head - 4 : pos + head], payload)
                raw = buf if pos == 0 and total == end else buf[pos : pos + total]
                frames.append(Frame(bool(first & 0x80), opcode, payload, raw))
                pos += total
        except ProtocolError as error:
            self.error = error
            return frames
        if pos < end:
            rest = buf[pos:]
            self._parts, self._have, self._need = [rest], len(rest), need
        return frames


class Assembler:
    """Data frames put together into messages (§5.4): returns (opcode, payload, raw) for a whole
    message, raw being the frame itself when it came in one frame (None when assembled), or None
    while a fragmented message is incomplete."""

    __slots__ = ("_max_size", "_opcode", "_parts", "_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._opcode: int | None = None  # the opcode of a fragmented message under way
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def open(self) -> bool:
        """A fragmented message is under way (a whole data frame now is a protocol error)."""
        return self._opcode is not None

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
