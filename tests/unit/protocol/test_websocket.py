"""RFC 6455 framing, sans-io: the RFC's own examples (§1.3, §5.7), frames split anywhere, the
frame's bytes kept for verbatim forwarding, fragments put together, and every framing error
with its close code. No sockets."""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.protocol.websocket import (
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Assembler,
    Frame,
    FrameReader,
    ProtocolError,
    accept_key,
    close_code,
    close_payload,
    frame,
    unmask,
    valid_key,
)
from tests.support.fuzz import FUZZ, bounded, near_frames, odd_text

# RFC 6455 §5.7's examples.
HELLO = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
HEL, LO = bytes([0x01, 0x03, 0x48, 0x65, 0x6C]), bytes([0x80, 0x02, 0x6C, 0x6F])
PING_HELLO = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])


def test_accept_key_is_the_rfcs_example() -> None:
    """§1.3: the server's answer to the sample nonce."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("dGhlIHNhbXBsZSBub25jZQ==", True),
        ("dGhlIHNhbXBsZSBub25jZQ", False),  # unpadded
        ("dGhlIHNhbXBsZSBub25jZXg=", False),  # 17 bytes
        ("!GhlIHNhbXBsZSBub25jZQ==", False),  # not base64
        (None, False),
        ("", False),
    ],
    ids=["rfc", "unpadded", "17-bytes", "not-base64", "missing", "empty"],
)
def test_only_a_base64_16_byte_key_is_valid(key: str | None, ok: bool) -> None:
    """Sec-WebSocket-Key must be 16 random bytes in base64 (§4.1)."""
    assert valid_key(key) is ok


@pytest.mark.parametrize(
    ("data", "masked", "expected"),
    [
        (HELLO, False, [(True, OP_TEXT, b"Hello")]),
        (HELLO_MASKED, True, [(True, OP_TEXT, b"Hello")]),
        (HEL + LO, False, [(False, OP_TEXT, b"Hel"), (True, OP_CONTINUATION, b"lo")]),
        (PING_HELLO, False, [(True, OP_PING, b"Hello")]),
        (bytes([0x82, 0x7E, 0x01, 0x00]) + bytes(256), False, [(True, OP_BINARY, bytes(256))]),
        (bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]) + bytes(65536), False, [(True, OP_BINARY, bytes(65536))]),
    ],
    ids=["text", "masked-text", "fragments", "ping", "16-bit-length", "64-bit-length"],
)
def test_the_rfcs_example_frames_are_read(data: bytes, masked: bool, expected: list[tuple[bool, int, bytes]]) -> None:
    """§5.7's frames, read whole: FIN, opcode and the unmasked payload."""
    frames = FrameReader(masked=masked, max_size=1 << 20).feed(data)
    assert [(f.fin, f.opcode, f.payload) for f in frames] == expected


def test_each_frame_keeps_its_bytes_as_received() -> None:
    """A frame's raw bytes are exactly what came in (what the relay forwards unchanged), masked
    frames included, several frames in one read."""
    masked = frame(OP_TEXT, b'{"event":"media"}', masked=True)
    reader = FrameReader(masked=True, max_size=1024)
    frames = reader.feed(HELLO_MASKED + masked)
    assert [f.raw for f in frames] == [HELLO_MASKED, masked]
    assert frames[1].payload == b'{"event":"media"}'


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.data())
def test_frames_split_anywhere_read_the_same(payloads: list[bytes], data: st.DataObject) -> None:
    """However the bytes are cut into reads, the same frames come out, none early."""
    stream = b"".join(frame(OP_BINARY, p, masked=True) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reader = FrameReader(masked=True, max_size=1024)
    got: list[Frame] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got += reader.feed(stream[last:cut])
        last = cut
    assert [f.payload for f in got] == payloads
    assert reader.buffered == 0


def test_a_built_frame_masks_with_a_fresh_key_and_reads_back() -> None:
    """A client's frames are masked (§5.3), each with its own key; a server's are not."""
    payload = os.urandom(200)
    one, two = frame(OP_TEXT, payload, masked=True), frame(OP_TEXT, payload, masked=True)
    assert one[1] & 0x80 and one[2:6] != two[2:6]
    assert FrameReader(masked=True, max_size=1024).feed(one)[0].payload == payload
    plain = frame(OP_TEXT, payload, masked=False)
    assert plain[1] == 126 and FrameReader(masked=False, max_size=1024).feed(plain)[0].payload == payload


def test_unmask_is_its_own_inverse() -> None:
    """XOR with the key twice gives the data back; a zero key leaves it as it is."""
    data = os.urandom(381)
    key = b"\x01\x02\x03\x04"
    assert unmask(key, unmask(key, data)) == data != unmask(key, data)
    assert unmask(b"\0\0\0\0", data) == data


@pytest.mark.parametrize(
    ("data", "masked", "code"),
    [
        (bytes([0xC1, 0x00]), False, CLOSE_PROTOCOL_ERROR),  # RSV1: no extension was negotiated
        (HELLO_MASKED, False, CLOSE_PROTOCOL_ERROR),  # a server must not mask
        (HELLO, True, CLOSE_PROTOCOL_ERROR),  # a client must mask
        (bytes([0x83, 0x00]), False, CLOSE_PROTOCOL_ERROR),  # reserved data opcode
        (bytes([0x8B, 0x00]), False, CLOSE_PROTOCOL_ERROR),  # reserved control opcode
        (bytes([0x89, 0x7E, 0x00, 0x7E]) + bytes(126), False, CLOSE_PROTOCOL_ERROR),  # control over 125
        (bytes([0x09, 0x00]), False, CLOSE_PROTOCOL_ERROR),  # a fragmented control frame
        (bytes([0x81, 0x7E, 0x04, 0x01]), False, CLOSE_TOO_BIG),  # 1025 > max_size, refused from its header
    ],
    ids=["rsv", "server-masks", "client-unmasked", "opcode-3", "opcode-11", "long-ping", "fragmented-ping", "too-big"],
)
def test_framing_errors_carry_their_close_code(data: bytes, masked: bool, code: int) -> None:
    """Each way of breaking §5 sets the reader's error, with the code to fail the connection with."""
    reader = FrameReader(masked=masked, max_size=1024)
    assert reader.feed(data) == []
    assert reader.error is not None and reader.error.code == code


def test_the_frames_before_a_fault_are_kept_and_nothing_after() -> None:
    """A good frame read in the same chunk as a bad one still comes out; the stream is then
    broken: later reads give nothing."""
    reader = FrameReader(masked=False, max_size=1024)
    (good,) = reader.feed(HELLO + bytes([0xC1, 0x00]))
    assert good.payload == b"Hello" and reader.error is not None
    assert reader.feed(HELLO) == []


def test_a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() -> None:
    """§5.2: the most significant bit of a 64-bit length must be 0."""
    reader = FrameReader(masked=False, max_size=1 << 20)
    reader.feed(bytes([0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1]))
    assert reader.error is not None and reader.error.code == CLOSE_PROTOCOL_ERROR


def test_a_large_frame_trickling_in_is_joined_once() -> None:
    """A frame arriving a few bytes at a time is not parsed (nor copied whole) on every read:
    the reader waits until the bytes its header asked for are there."""
    data = frame(OP_BINARY, bytes(60_000), masked=False)
    reader = FrameReader(masked=False, max_size=64 * 1024)
    got: list[Frame] = []
    for at in range(0, len(data), 100):
        got += reader.feed(data[at : at + 100])
        assert reader.buffered == (0 if got else min(at + 100, len(data)))
    assert [len(f.payload) for f in got] == [60_000]


def test_fragments_are_put_together() -> None:
    """A message in fragments comes out whole, with no frame bytes (it must be framed anew); a
    message in one frame keeps its frame."""
    assembler = Assembler(max_size=1024)
    frames = FrameReader(masked=False, max_size=1024).feed(HEL + LO + HELLO)
    assert assembler.add(frames[0]) is None
    assert assembler.add(frames[1]) == (OP_TEXT, b"Hello", None)
    assert assembler.add(frames[2]) == (OP_TEXT, b"Hello", HELLO)


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([LO], CLOSE_PROTOCOL_ERROR),  # a continuation with no message begun
        ([HEL, HELLO], CLOSE_PROTOCOL_ERROR),  # a new message before the last one ended
        ([HEL, bytes([0x00, 0x7E, 0x03, 0xFE]) + bytes(1022)], CLOSE_TOO_BIG),  # 3 + 1022 > 1024
    ],
    ids=["orphan-continuation", "interleaved", "too-big-in-fragments"],
)
def test_bad_fragments_are_protocol_errors(frames: list[bytes], code: int) -> None:
    """Fragments out of order, or adding up past the limit, fail the connection."""
    reader, assembler = FrameReader(masked=False, max_size=1024), Assembler(max_size=1024)
    read = [f for data in frames for f in reader.feed(data)]
    for f in read[:-1]:
        assembler.add(f)
    with pytest.raises(ProtocolError) as raised:
        assembler.add(read[-1])
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", CLOSE_PROTOCOL_ERROR),  # one byte
        (close_payload(1005), CLOSE_PROTOCOL_ERROR),  # "no status": never sent in a frame
        (close_payload(999), CLOSE_PROTOCOL_ERROR),
        (close_payload(2999), CLOSE_PROTOCOL_ERROR),
        (close_payload(5000), CLOSE_PROTOCOL_ERROR),
        (b"\x03\xe8\xff", CLOSE_INVALID_DATA),  # a reason not UTF-8
    ],
    ids=["one-byte", "1005", "999", "2999", "5000", "reason-not-utf8"],
)
def test_a_close_frame_no_endpoint_may_send_is_an_error(payload: bytes, code: int) -> None:
    """§5.5.1 and §7.4: a close payload of one byte, a reserved code, or a reason not UTF-8."""
    with pytest.raises(ProtocolError) as raised:
        close_code(payload)
    assert raised.value.code == code


def test_a_close_frame_carries_its_code() -> None:
    """A close payload is the code in network order, then a reason; none reads as 1005."""
    (closing,) = FrameReader(masked=False, max_size=1024).feed(
        frame(OP_CLOSE, close_payload(1001, "bye"), masked=False)
    )
    assert close_code(closing.payload) == 1001 and closing.payload[2:] == b"bye"
    assert close_code(b"") == CLOSE_NO_STATUS


_streams = st.one_of(
    st.lists(st.one_of(near_frames(), st.binary(max_size=20)), max_size=8).map(b"".join),
    st.binary(max_size=300),
)


@FUZZ
@given(_streams, st.booleans(), st.lists(st.integers(0, 2000), max_size=6), st.integers(0, 300))
@example(bytes([0x81, 0xFF]) + (2**63).to_bytes(8, "big") + b"k" * 4, True, [], 1000)  # a length's top bit
@example(bytes([0x88, 0x80]) + b"kkkk", True, [1, 2], 1000)  # a close frame cut into reads
def test_any_bytes_give_frames_or_a_protocol_error(data: bytes, masked: bool, cuts: list[int], max_size: int) -> None:
    """FrameReader, Assembler and close_code on any bytes, cut into reads anywhere, give well-formed frames,
    messages and codes, or a ProtocolError (as `error`, or raised by the last two), and never anything else."""
    reader = FrameReader(masked=masked, max_size=max_size)
    assembler = Assembler(max_size)
    last = 0
    with bounded():
        for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
            frames = reader.feed(data[last:cut])
            last = cut
            for f in frames:
                assert f.opcode in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
                assert len(f.payload) <= max_size
                if f.opcode >= OP_CLOSE:
                    assert f.fin and len(f.payload) <= 125
                refused: int | None = None
                try:
                    if f.opcode == OP_CLOSE:
                        code = close_code(f.payload)
                        assert code == CLOSE_NO_STATUS or 1000 <= code <= 4999
                    elif f.opcode < OP_CLOSE:
                        assembler.add(f)
                except ProtocolError as error:
                    refused = error.code
                assert refused in (None, CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_TOO_BIG)
            if reader.error is not None:
                assert reader.error.code in (CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG)
                assert reader.feed(data[last:]) == []  # nothing is read after a fault
                break


@FUZZ
@given(st.one_of(st.none(), odd_text, st.binary(max_size=24).map(lambda raw: raw.decode("latin-1"))))
@example("dGhlIHNhbXBsZSBub25jZQ\udcff")
@example("ä" * 24)
def test_any_sec_websocket_key_is_valid_or_not(key: str | None) -> None:
    """valid_key() on any header value says True or False, and a key it takes has an accept key."""
    with bounded():
        ok = valid_key(key)
    if ok:
        assert key is not None and len(accept_key(key)) == 28
