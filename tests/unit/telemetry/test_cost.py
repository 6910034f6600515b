"""Cost arithmetic: exact µ$ conversion, per-started-minute billing, SMS segments, LLM rounding."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol import twiml
from gateway.telemetry import cost
from gateway.telemetry.cost import ModelPrice, Prices

PRICES = Prices(
    webhook=100,
    voice_minute=8500,
    stream_minute=4000,
    sms_segment=7900,
    models={"gpt-4o-mini": ModelPrice(input_per_1m=150_000, output_per_1m=600_000)},
)
BASIC = sorted(cost.GSM7_BASIC)


@pytest.mark.parametrize(
    ("usd", "micro"),
    [
        pytest.param(0.0079, 7900, id="sms-price-not-7899"),
        pytest.param(0.15, 150_000, id="model-price"),
        pytest.param(0.0085, 8500, id="voice-price"),
        pytest.param(0.0001, 100, id="webhook-price"),
        pytest.param(200, 200_000_000, id="int-dollars"),
        pytest.param(0.0, 0, id="zero"),
        pytest.param(0.0000005, 0, id="half-rounds-to-even-0"),
        pytest.param(0.0000015, 2, id="half-rounds-to-even-2"),
        pytest.param(0.0000025, 2, id="half-rounds-to-even-2-again"),
        pytest.param(1e-7, 0, id="below-a-micro"),
        pytest.param(123456.789012, 123_456_789_012, id="large"),
    ],
)
def test_to_micro_is_exact_on_the_written_digits(usd: float, micro: int) -> None:
    """Dollars become µ$ from their decimal digits, rounding half to even, with no float drift."""
    assert cost.to_micro(usd) == micro


@pytest.mark.parametrize("usd", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_to_micro_refuses_non_finite(usd: float) -> None:
    """An infinite or NaN amount is a ValueError, not an OverflowError deep in a sum."""
    with pytest.raises(ValueError, match="not a finite amount"):
        cost.to_micro(usd)


def test_to_usd_inverts_to_micro() -> None:
    """µ$ back to dollars for export."""
    assert cost.to_usd(7900) == 0.0079
    assert cost.to_usd(cost.to_micro(200)) == 200.0


def test_free_means_no_price_at_all() -> None:
    """Default Prices are free; any flat price or any nonzero model price makes them not free."""
    assert Prices().free
    assert Prices(models={"m": ModelPrice()}).free
    assert not Prices(sms_segment=1).free
    assert not Prices(models={"m": ModelPrice(output_per_1m=1)}).free


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [
        pytest.param(0, 0, id="zero"),
        pytest.param(0.001, 1, id="a-millisecond"),
        pytest.param(1, 1, id="one-second"),
        pytest.param(60, 1, id="one-minute"),
        pytest.param(60.5, 2, id="just-over"),
        pytest.param(61, 2, id="61s"),
        pytest.param(120, 2, id="two-minutes"),
        pytest.param(14_400, 240, id="four-hour-maximum"),
        pytest.param(-5, 0, id="negative"),
        pytest.param(math.nan, 0, id="nan"),
        pytest.param(math.inf, 0, id="inf"),
    ],
)
def test_billed_minutes_counts_every_started_minute(seconds: float, minutes: int) -> None:
    """Voice and streams bill per started minute; nonsense durations bill nothing."""
    assert cost.billed_minutes(seconds) == minutes


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        pytest.param("", 1, id="empty-is-one"),
        pytest.param("a" * 160, 1, id="gsm-160"),
        pytest.param("a" * 161, 2, id="gsm-161"),
        pytest.param("a" * 306, 2, id="gsm-306"),
        pytest.param("a" * 307, 3, id="gsm-307"),
        pytest.param("é£Δ" * 53 + "à", 1, id="gsm-non-ascii-160"),
        pytest.param("{" * 80, 1, id="extension-160-septets"),
        pytest.param("{" * 80 + "a", 2, id="extension-161-septets"),
        pytest.param("€" * 81, 2, id="extension-162-septets"),
        # 152 septets then an extension pair: the pair cannot straddle parts 1 and 2.
        pytest.param("a" * 152 + "[" + "a" * 8, 2, id="extension-pair-moves-to-next-part"),
        pytest.param("a" * 152 + "[" + "a" * 151, 2, id="pair-moved-part-2-full"),
        pytest.param("a" * 152 + "[" + "a" * 152, 3, id="pair-moved-spills"),
        pytest.param("a" * 151 + "[" + "a" * 153, 2, id="pair-fits-exactly"),
        pytest.param("\f^{}\\[~]|€", 1, id="every-extension-char"),
        pytest.param("ç", 1, id="small-c-cedilla-is-ucs2"),
        pytest.param("ç" * 70, 1, id="ucs2-70"),
        pytest.param("ç" * 71, 2, id="ucs2-71"),
        pytest.param("ç" * 134, 2, id="ucs2-134"),
        pytest.param("ç" * 135, 3, id="ucs2-135"),
        pytest.param("a" * 69 + "ç", 1, id="one-ucs2-char-70"),
        pytest.param("a" * 100 + "\u2019", 2, id="one-curly-quote-makes-all-ucs2"),
        pytest.param("😀" * 35, 1, id="emoji-two-units-70"),
        pytest.param("😀" * 36, 2, id="emoji-two-units-72"),
        # 66 units then an emoji: the surrogate pair starts part 2 rather than split.
        pytest.param("ç" * 66 + "😀" + "ç" * 65, 2, id="surrogate-pair-moves-to-next-part"),
        pytest.param("ç" * 66 + "😀" + "ç" * 66, 3, id="surrogate-pair-moved-spills"),
        pytest.param("{" + "ç", 1, id="extension-char-in-ucs2-is-one-unit"),
    ],
)
def test_sms_segments(text: str, segments: int) -> None:
    """GSM-7 160/153 septets (extension chars 2, never split), else UCS-2 70/67 units (pairs not split)."""
    assert cost.sms_segments(text) == segments


def test_gsm_tables_are_the_3gpp_default_alphabet() -> None:
    """127 basic characters (128 less ESC) and the 10 of the default extension table."""
    assert len(cost.GSM7_BASIC) == 127 and "\x1b" not in cost.GSM7_BASIC
    extension = cost.GSM7_EXTENSION
    assert extension == {"\f", "^", "{", "}", "\\", "[", "~", "]", "|", "€"}
    assert not cost.GSM7_BASIC & cost.GSM7_EXTENSION
    assert set("@£$¥èéùìòÇ\n\rØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà") <= cost.GSM7_BASIC
    assert not {"ç", "`", "á", "í", "ó", "ú", "È"} & cost.GSM7_BASIC


@given(st.text(alphabet=st.sampled_from(BASIC), max_size=800))
def test_basic_gsm_text_follows_the_simple_formula(text: str) -> None:
    """Basic-alphabet text is 1 segment up to 160 characters, else ceil(len / 153)."""
    expected = 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    assert cost.sms_segments(text) == expected


@given(st.text(alphabet=st.sampled_from(BASIC + sorted(cost.GSM7_EXTENSION)), max_size=800))
def test_gsm_segments_are_bounded_by_septets(text: str) -> None:
    """Never fewer than ceil(septets / 160); an unsplit pair wastes at most one septet per part."""
    septets = len(text) + sum(c in cost.GSM7_EXTENSION for c in text)
    segments = cost.sms_segments(text)
    assert max(1, math.ceil(septets / 160)) <= segments
    assert segments == 1 or segments <= math.ceil(septets / 152)


@pytest.mark.parametrize(
    ("document", "segments"),
    [
        pytest.param(
            b"<Response><Message>hi</Message><Message><Body>x</Body></Message></Response>", 2, id="text-and-body"
        ),
        pytest.param(twiml.message("a" * 161), 2, id="rendered-161"),
        pytest.param(twiml.EMPTY, 0, id="empty-response"),
        pytest.param(twiml.REJECT_BUSY, 0, id="voice-twiml"),
        pytest.param(b"<Response><Message>", 0, id="not-xml"),
        pytest.param(b"", 0, id="no-bytes"),
        pytest.param(
            b"<Response><Message>hi<Media>https://x.example/a-long-url</Media></Message></Response>",
            1,
            id="media-url-not-counted",
        ),
        pytest.param(
            b"<Response><Message><Body>" + "ç".encode() * 71 + b"</Body><Media>u</Media></Message></Response>",
            2,
            id="body-child-ucs2",
        ),
        pytest.param(b"<Response><Message/></Response>", 1, id="empty-message-still-one"),
    ],
)
def test_message_segments(document: bytes, segments: int) -> None:
    """Each <Message>'s text (own or <Body>) is counted; no messages or bad XML counts 0."""
    assert cost.message_segments(document) == segments


def test_message_segments_are_cached_per_document() -> None:
    """A repeated static reply is parsed once."""
    document = twiml.message("cached " * 3)
    before = cost.message_segments.cache_info().hits
    assert cost.message_segments(document) == cost.message_segments(document) == 1
    assert cost.message_segments.cache_info().hits >= before + 1


@pytest.mark.parametrize(
    ("computed", "expected"),
    [
        pytest.param(cost.webhook_cost(PRICES), {"webhook": 100}, id="webhook"),
        pytest.param(cost.voice_cost(PRICES, 61), {"voice": 17_000}, id="voice-61s"),
        pytest.param(cost.voice_cost(PRICES, 0), {}, id="voice-unanswered"),
        pytest.param(cost.stream_cost(PRICES, 59.9), {"stream": 4000}, id="stream-under-a-minute"),
        pytest.param(cost.sms_cost(PRICES, 3), {"sms": 23_700}, id="sms-3-segments"),
        pytest.param(cost.sms_cost(PRICES, 0), {}, id="sms-none"),
        pytest.param(cost.sms_cost(PRICES, -1), {}, id="sms-negative"),
        pytest.param(cost.webhook_cost(Prices()), {}, id="free-webhook"),
        pytest.param(cost.voice_cost(Prices(), 600), {}, id="free-voice"),
    ],
)
def test_part_costs(computed: cost.Cost, expected: cost.Cost) -> None:
    """Each part prices its unit; a zero cost is an empty mapping, not {part: 0}."""
    assert computed == expected


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "micro"),
    [
        pytest.param(1_000_000, 0, 150_000, id="a-million-in"),
        pytest.param(0, 1_000_000, 600_000, id="a-million-out"),
        pytest.param(1000, 100, 210, id="exact"),  # 150_000_000 + 60_000_000 = 210 µ$ exactly
        pytest.param(1, 0, 1, id="one-token-rounds-up"),
        pytest.param(7, 1, 2, id="sum-rounded-once"),  # (1_050_000 + 600_000) / 1e6 = 1.65 -> 2
        pytest.param(0, 0, 0, id="no-tokens"),
        pytest.param(-5, 0, 0, id="negative-tokens"),
    ],
)
def test_llm_cost_rounds_up_once(input_tokens: int, output_tokens: int, micro: int) -> None:
    """Tokens * price per million, summed then rounded up to a whole µ$ in integer maths."""
    expected = {"llm": micro} if micro else {}
    assert cost.llm_cost(PRICES, "gpt-4o-mini", input_tokens, output_tokens) == expected


def test_llm_cost_of_an_unpriced_model_is_nothing() -> None:
    """A model the policy does not price costs {}."""
    assert cost.llm_cost(PRICES, "gpt-5", 10_000, 10_000) == {}


def test_add_sums_parts_in_part_order_without_mutating() -> None:
    """add returns a new mapping in PARTS order; total sums it; the inputs are untouched."""
    a: cost.Cost = {"sms": 7900, "webhook": 100}
    b: cost.Cost = {"llm": 3, "webhook": 100}
    summed = cost.add(a, b)
    assert list(summed.items()) == [("webhook", 200), ("sms", 7900), ("llm", 3)]
    assert a == {"sms": 7900, "webhook": 100} and b == {"llm": 3, "webhook": 100}
    assert cost.total(summed) == 8103
    assert cost.add({}, {}) == {} and cost.total({}) == 0
    assert cost.PARTS == ("webhook", "voice", "stream", "sms", "llm")
