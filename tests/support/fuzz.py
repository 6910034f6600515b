"""What the fuzz tests of the parsers of unverified input share: their settings, the odd text a
peer can send, and a bound that turns a hang into a failure."""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Modest, so every fuzz test together takes a few seconds. No deadline: timing one example
# on the shared 2-core box flakes; `bounded` catches what the deadline was for, a parser that
# never returns.
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOUND = 2.0  # s: any one call of a parser on a few hundred bytes takes microseconds

# Text as aiohttp hands it over: header values and paths are decoded with surrogateescape, so a
# byte that is not UTF-8 arrives as a lone surrogate (which any str.encode() refuses); plus text
# with every kind of character, and plain text.
odd_text = st.one_of(
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.text(st.characters(exclude_categories=()), max_size=200),
    st.text(max_size=200),
)


@st.composite
def near_frames(draw: st.DrawFn) -> bytes:
    """A frame's bytes as a hostile peer writes them: any first byte (FIN, RSV bits, opcode), a
    mask bit either way, a length in any of its three forms (over-long and top-bit ones too),
    and a payload that may be shorter than it says."""
    first = draw(st.integers(0, 255))
    mask = draw(st.sampled_from([0, 0x80]))
    payload = draw(st.binary(max_size=200))
    form = draw(st.sampled_from(["short", "16", "64", "lie"]))
    if form == "short" and len(payload) < 126:
        head = bytes((first, mask | len(payload)))
    elif form == "16":
        head = struct.pack("!BBH", first, mask | 126, len(payload))
    elif form == "64":
        head = struct.pack("!BBQ", first, mask | 127, draw(st.sampled_from([len(payload), 2**63, 2**64 - 1])))
    else:
        head = bytes((first, mask | draw(st.integers(0, 127))))
    key = draw(st.binary(min_size=4, max_size=4)) if mask else b""
    return head + key + payload


class Hung(AssertionError):
    """A parser was still running after BOUND seconds."""


@contextmanager
def bounded(seconds: float = BOUND) -> Iterator[None]:
    """Raise Hung inside the block if it runs longer than `seconds` (SIGALRM: pytest runs tests
    in the main thread)."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hung(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
