"""What a request costs the tenant, from the prices in its policy: pure arithmetic, no I/O.

Money is integer micro-dollars (µ$, 1 USD = 1_000_000 µ$) everywhere: float dollars drift when
thousands of 0.0079s are summed, integers do not. Only the edges convert (`to_micro` when a policy
loads, `to_usd` when a value is exported).

Twilio's billing rules modelled here (DESIGN §4): voice and Media Streams per started minute, SMS
per segment (GSM-7: 160 septets in one segment, 153 per segment when split; anything outside
GSM-7 makes the whole message UCS-2: 70 UTF-16 code units, then 67). The segment count is what
the message would cost without Twilio's optional Smart Encoding (which swaps e.g. curly quotes
for GSM ones): an upper bound when a Messaging Service has it on.
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

MICRO = 1_000_000
PARTS = ("webhook", "voice", "stream", "sms", "llm")

Cost = dict[str, int]
"""Cost part (one of PARTS) → µ$; only nonzero parts are present, so {} is free."""

# 3GPP TS 23.038 §6.2.1, the GSM 7-bit default alphabet: 128 code points less 0x1B (ESC, which
# introduces the extension table), each one septet. Written as Unicode code points in table order.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x00-0x1F (\x1b removed below)
    " !\"#¤%&'()*+,-./0123456789:;<=>?"  # 0x20-0x3F
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"  # 0x40-0x5F
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"  # 0x60-0x7F
) - {"\x1b"}
# §6.2.1.1, the default extension table: ESC + one septet, so two septets each.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160  # septets in an unsplit message (140 octets)
GSM7_PART = 153  # septets per part of a split one: the 6-octet concatenation header takes 7
UCS2_SINGLE = 70  # UTF-16 code units in an unsplit message
UCS2_PART = 67  # per part of a split one


def to_micro(usd: float) -> int:
    """Dollars → µ$, rounded half to even on the decimal digits written, not on the binary float:
    0.0079 is 0.00789999… as a float, and must still be 7900 µ$."""
    if not math.isfinite(usd):
        raise ValueError(f"not a finite amount: {usd!r}")
    # repr(float) is the shortest text that reads back as the same float: the policy's own digits.
    return int(Decimal(repr(usd)).scaleb(6).to_integral_value(rounding=ROUND_HALF_EVEN))


def to_usd(micro: int) -> float:
    return micro / MICRO


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """An LLM's price in µ$ per million tokens."""

    input_per_1m: int = 0
    output_per_1m: int = 0


@dataclass(frozen=True, slots=True)
class Prices:
    """One tenant's prices in µ$. There are no built-in prices: a price not given is 0, not charged."""

    webhook: int = 0
    voice_minute: int = 0
    stream_minute: int = 0
    sms_segment: int = 0
    models: Mapping[str, ModelPrice] = field(default_factory=dict)

    @property
    def free(self) -> bool:
        """True when nothing has a price, so callers can skip every cost computation."""
        flat = (self.webhook, self.voice_minute, self.stream_minute, self.sms_segment)
        return not any(flat) and not any(m.input_per_1m or m.output_per_1m for m in self.models.values())


def billed_minutes(seconds: float) -> int:
    """Minutes billed for a call or stream of `seconds`: every started minute counts.
    0 s is 0 minutes; a negative, NaN or infinite duration (a bad callback) is 0 too."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return math.ceil(seconds / 60)


def _pack(units: list[int], single: int, part: int) -> int:
    """Segments for characters of the given sizes: one if all fit in `single`, else filled
    part by part, where a character that does not fit whole starts the next part."""
    if sum(units) <= single:
        return 1
    segments, used = 1, 0
    for size in units:
        if used + size > part:
            segments, used = segments + 1, 0
        used += size
    return segments


def sms_segments(text: str) -> int:
    """Segments Twilio bills for an SMS of `text`. "" is 1: an empty message sent is still one."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text):
        # An ESC + character pair cannot be split between two parts.
        return _pack([2 if c in GSM7_EXTENSION else 1 for c in text], GSM7_SINGLE, GSM7_PART)
    # UCS-2 as sent is UTF-16: a character beyond the BMP (most emoji) is a surrogate pair,
    # two code units that stay in one part.
    return _pack([2 if ord(c) > 0xFFFF else 1 for c in text], UCS2_SINGLE, UCS2_PART)


def _message_text(element: ET.Element) -> str:
    body = element.find("Body")
    if body is not None:
        return "".join(body.itertext())
    # Only the Message's own text: a <Media> child's URL is not part of the SMS body.
    return (element.text or "") + "".join(child.tail or "" for child in element)


@functools.lru_cache(maxsize=1024)
def message_segments(twiml: bytes) -> int:
    """Total SMS segments of the <Message> replies in a TwiML document (text directly inside,
    or in a <Body> child); 0 when it has none or is not XML. Cached: a static reply is the same
    bytes object every time, whose hash Python keeps."""
    try:
        # Our own rendering or the tenant runtime's answer; expat refuses entity-expansion bombs.
        root = ET.fromstring(twiml)  # noqa: S314
    except (ET.ParseError, LookupError, ValueError):  # not XML, or an encoding expat does not know
        return 0
    return sum(sms_segments(_message_text(element)) for element in root.iter("Message"))


def _only(part: str, micro: int) -> Cost:
    return {part: micro} if micro else {}


def webhook_cost(prices: Prices) -> Cost:
    return _only("webhook", prices.webhook)


def voice_cost(prices: Prices, seconds: float) -> Cost:
    return _only("voice", billed_minutes(seconds) * prices.voice_minute)


def stream_cost(prices: Prices, seconds: float) -> Cost:
    return _only("stream", billed_minutes(seconds) * prices.stream_minute)


def sms_cost(prices: Prices, segments: int) -> Cost:
    return _only("sms", max(segments, 0) * prices.sms_segment)


def llm_cost(prices: Prices, model: str, input_tokens: int, output_tokens: int) -> Cost:
    """One completion's cost, rounded up once to a whole µ$ (never under-reported, at most
    1 µ$ over). A model without a price costs nothing: {}."""
    price = prices.models.get(model)
    if price is None:
        return {}
    scaled = max(input_tokens, 0) * price.input_per_1m + max(output_tokens, 0) * price.output_per_1m
    return _only("llm", -(-scaled // 1_000_000))  # ceiling division, exact in integers


def add(a: Cost, b: Cost) -> Cost:
    """A new cost with both summed part by part, in PARTS order (then any other part)."""
    if not b or not a:
        # The usual case on a webhook (a price and nothing to add to it): a fifth of the time.
        return {k: v for k, v in (a or b).items() if v}
    keys = [p for p in PARTS if p in a or p in b] + [k for k in {**a, **b} if k not in PARTS]
    summed = {k: a.get(k, 0) + b.get(k, 0) for k in keys}
    return {k: v for k, v in summed.items() if v}


def total(cost: Cost) -> int:
    return sum(cost.values())
