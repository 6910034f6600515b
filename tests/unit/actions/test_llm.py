"""The `llm` action's pure parts: voice turns, TwiML cut and escaped for Twilio, OpenAI's wire
format, the cost estimate, compiling, and the child span its step becomes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import ValidationError

from gateway.actions import ACTIONS, CompileContext, llm
from gateway.actions.llm import LlmCall, estimate, voice_step
from gateway.exchange import Exchange
from gateway.policy.registry import PolicySet
from gateway.protocol import llm_twiml, openai
from gateway.telemetry.cost import ModelPrice, Prices
from gateway.telemetry.spans import SpanBuilder
from gateway.telemetry.tracing import Sampler
from tests.support.clock import FakeClock
from tests.support.otlp import attributes

KEY = "sk-test-secret-key"
ENV = {"ACME_OPENAI_KEY": KEY}


def _root(document: bytes) -> ET.Element:
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def _compile(public_url: str | None = "https://gw.example.com/edge", **values: object) -> LlmCall:
    value = llm.Llm.model_validate(
        {"model": "gpt-4o-mini", "system": "Be brief.", "api_key_env": "ACME_OPENAI_KEY"} | values
    )
    call = ACTIONS["llm"].compile(value, CompileContext("acme", public_url, env=ENV)).call
    assert isinstance(call, LlmCall)
    return call


@pytest.mark.parametrize(
    ("turn", "heard", "expected"),
    [
        pytest.param(None, False, ("prompt", 2), id="first-webhook-prompts"),
        pytest.param(2, True, ("answer", 3), id="first-answer-then-gather"),
        pytest.param(3, True, ("answer", 4), id="second-answer"),
        pytest.param(4, True, ("last", 4), id="third-answer-is-the-last"),
        pytest.param(5, True, ("closing", 5), id="past-the-last-no-call"),
        pytest.param(2, False, ("prompt", 3), id="silence-asks-again-and-uses-a-turn"),
        pytest.param(4, False, ("closing", 4), id="silence-on-the-last-turn-ends"),
        pytest.param(None, True, ("answer", 3), id="words-without-our-turn-are-the-first"),
        pytest.param(1, False, ("prompt", 2), id="turn-one-prompts"),
    ],
)
def test_voice_step(turn: int | None, heard: bool, expected: tuple[str, int]) -> None:
    """With max_turns 3: the prompt, then three answers (the third with the closing line), then
    the closing line alone; silence asks again, within the same bound."""
    assert voice_step(turn, heard, 3) == expected


@pytest.mark.parametrize(
    ("url", "turn"),
    [
        ("https://gw.example.com/t/acme/voice?turn=2", 2),
        ("https://gw.example.com/twilio/voice?a=b&turn=7", 7),
        ("https://gw.example.com/twilio/voice", None),
        ("https://gw.example.com/twilio/voice?turn=two", None),
        ("https://gw.example.com/twilio/voice?turn=123456", None),
    ],
)
def test_turn_is_read_from_the_signed_query(url: str, turn: int | None) -> None:
    """Our `turn` parameter, a small number; anything else is no turn of ours."""
    assert llm_twiml.turn_of(url) == turn


def test_turn_urls_are_absolute_or_relative() -> None:
    """Under a base: base?turn=N; without one, the relative ?turn=N."""
    assert llm_twiml.turn_url("https://gw/t/acme/voice", 3) == "https://gw/t/acme/voice?turn=3"
    assert llm_twiml.turn_url("", 2) == "?turn=2"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("Short.", 10, "Short.", id="fits"),
        pytest.param("One two. Three four five six.", 14, "One two.", id="at-a-sentence"),
        pytest.param("One two. Three four five six.", 20, "One two. Three four", id="sentence-too-early-space"),
        pytest.param("Pi is 3.14159 and more words here", 20, "Pi is 3.14159 and", id="not-inside-a-number"),
        pytest.param("Aaaa. " + "b" * 20, 20, "Aaaa. " + "b" * 14, id="sentence-too-early-hard"),
        pytest.param("Aaaa bbbbbbbbb cccccccccccc", 20, "Aaaa bbbbbbbbb", id="at-a-space"),
        pytest.param("x" * 30, 20, "x" * 20, id="hard"),
        pytest.param("Done!  Next sentence", 6, "Done!", id="sentence-at-the-edge"),
    ],
)
def test_cut(text: str, limit: int, expected: str) -> None:
    """At the last sentence end keeping half the limit, else the last space, else hard."""
    assert llm_twiml.cut(text, limit) == expected


def test_cut_in_bytes_keeps_whole_characters() -> None:
    """utf8=True: the cut is by encoded size and never splits a character."""
    cut = llm_twiml.cut("é" * 10, 7, utf8=True)
    assert cut == "é" * 3 and len(cut.encode()) <= 7


def test_cut_at_a_cjk_full_stop() -> None:
    """A CJK sentence ends at its full stop, which no space follows."""
    assert llm_twiml.cut("今日は晴れです。明日は雨でしょう", 12) == "今日は晴れです。"


def test_say_and_sms_limits() -> None:
    """A <Say> is at most 4000 UTF-8 bytes, an SMS body 1600 characters."""
    long = "This is a sentence. " * 400
    assert len(llm_twiml.say_text(long).encode()) <= 4000
    assert llm_twiml.say_text(long).endswith(".")
    assert len(llm_twiml.sms_text(long)) <= 1600


def test_clean_drops_what_xml_cannot_hold() -> None:
    """Control characters go (a document with one is refused by Twilio); tabs and newlines stay."""
    assert llm_twiml.clean(" a\x00b\x1bc\td\ne\ufffe ") == "abc\td\ne"


def test_message_is_escaped_and_cut() -> None:
    """Markup in a reply is text in <Message>, and a long reply is cut to 1600 characters."""
    document = llm_twiml.message('Use <b> & "quotes" \x07' + " word" * 1000)
    (message,) = _root(document)
    assert message.tag == "Message"
    assert message.text is not None and message.text.startswith('Use <b> & "quotes"') and len(message.text) <= 1600
    assert b"&lt;b&gt; &amp;" in document


def test_listen_puts_the_reply_before_a_gather_and_the_closing_after() -> None:
    """<Say>reply</Say><Gather input=speech action…><Say>prompt</Say></Gather><Say>closing</Say><Hangup/>."""
    document = llm_twiml.listen(
        "https://gw/t/acme/voice?turn=3", reply="A <reply>.", prompt="Anything else?", closing="Bye.",
        voice="Polly.Joanna", language="en-US",
    )  # fmt: skip
    root = _root(document)
    assert [child.tag for child in root] == ["Say", "Gather", "Say", "Hangup"]
    say, gather, closing, _ = root
    assert (say.text, say.get("voice"), say.get("language")) == ("A <reply>.", "Polly.Joanna", "en-US")
    assert gather.attrib == {
        "input": "speech",
        "action": "https://gw/t/acme/voice?turn=3",
        "method": "POST",
        "speechTimeout": "auto",
        "language": "en-US",
    }
    assert [(child.tag, child.text) for child in gather] == [("Say", "Anything else?")]
    assert closing.text == "Bye."


def test_goodbye_is_the_reply_then_the_closing_line() -> None:
    """The last turn: no Gather, the call ends."""
    assert [c.tag for c in _root(llm_twiml.goodbye(reply="Yes.", closing="Bye."))] == ["Say", "Say", "Hangup"]
    assert [c.tag for c in _root(llm_twiml.goodbye(closing="Bye."))] == ["Say", "Hangup"]


def test_chat_request_body() -> None:
    """The system prompt then the caller's words, the model and max_tokens; temperature when set."""
    body = orjson.loads(openai.chat_request("gpt-4o-mini", "Be brief.", "Hours?", 80))
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hours?"}],
        "max_tokens": 80,
    }
    assert orjson.loads(openai.chat_request("m", "s", "u", 1, 0.2))["temperature"] == 0.2


def test_chat_request_for_a_reasoning_model() -> None:
    """limit_field max_completion_tokens: the limit goes under that name, and max_tokens is absent."""
    body = orjson.loads(openai.chat_request("o3-mini", "s", "u", 90, None, "max_completion_tokens"))
    assert body["max_completion_tokens"] == 90 and "max_tokens" not in body


def _completion(**fields: object) -> bytes:
    data: dict[str, object] = {
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"message": {"role": "assistant", "content": "Nine to five."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }
    return orjson.dumps(data | fields)


def test_parse_completion() -> None:
    """The first choice's text, the model answered, finish reasons and usage."""
    completion = openai.parse_completion(_completion())
    assert completion == openai.Completion("Nine to five.", "gpt-4o-mini-2024-07-18", ("stop",), 12, 4)


def test_parse_completion_without_usage_or_text() -> None:
    """null content is "" (a refusal, a tool call); usage missing or odd is None."""
    choices = [{"message": {"content": None}, "finish_reason": "content_filter"}]
    completion = openai.parse_completion(_completion(choices=choices, usage={"prompt_tokens": True}))
    assert (completion.content, completion.finish_reasons) == ("", ("content_filter",))
    assert (completion.input_tokens, completion.output_tokens) == (None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"<html>oops</html>", "not JSON", id="html"),
        pytest.param(b"[1]", "not a JSON object", id="list"),
        pytest.param(_completion(choices=[]), "no choices", id="no-choices"),
        pytest.param(_completion(choices=[{"text": "secret words"}]), "no message in the first choice", id="legacy"),
        pytest.param(_completion(choices=[{"message": {"content": ["secret words"]}}]), "not text", id="parts"),
    ],
)
def test_parse_completion_refuses_other_shapes(body: bytes, message: str) -> None:
    """ValueError naming what is wrong, never quoting the answer."""
    with pytest.raises(ValueError, match=message) as caught:
        openai.parse_completion(body)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            b'{"error": {"message": "Incorrect API key sk-abc", "type": "x", "code": "invalid_api_key"}}',
            "invalid_api_key",
        ),
        (b'{"error": {"message": "m", "type": "server_error", "code": null}}', "server_error"),
        (b'{"error": {"code": "has spaces <and> markup"}}', ""),
        (b"not json", ""),
        (b'{"detail": "x"}', ""),
    ],
)
def test_error_code(body: bytes, code: str) -> None:
    """OpenAI's error code (else type) when it has a name's shape; never its message."""
    assert openai.error_code(body) == code


@pytest.mark.parametrize(
    ("value", "kept"), [("20", "20"), ("1.5", "1.5"), ("Wed, 21 Oct 2015 07:28:00 GMT", ""), (None, "")]
)
def test_retry_after(value: str | None, kept: str) -> None:
    """Seconds are kept for the log; a date or anything else is dropped."""
    assert openai.retry_after(value) == kept


def test_estimate_is_length_over_four_plus_format_and_max_tokens() -> None:
    """ceil(chars / 4) + 10 input tokens and max_tokens output tokens at the model's price."""
    prices = Prices(models={"m": ModelPrice(input_per_1m=10_000_000, output_per_1m=30_000_000)})
    # (9 + 6) chars → 4 tokens + 10 = 14 tokens at 10 µ$, and 80 at 30 µ$.
    assert estimate(prices, "m", "Be brief.", "Hours?", 80) == 14 * 10 + 80 * 30
    assert estimate(prices, "unpriced", "Be brief.", "Hours?", 80) == 0


def test_compile_defaults_and_request() -> None:
    """The defaults of the schema; OpenAI's URL; the key only in the Authorization header."""
    call = _compile()
    assert call.url == "https://api.openai.com/v1/chat/completions"
    assert (call.max_tokens, call.timeout, call.max_turns) == (150, 4.0, 5)
    assert call.headers == {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert KEY not in repr(call)
    assert call.step == "chat gpt-4o-mini"
    assert call.request_attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 150,
        "server.address": "api.openai.com",
        "server.port": 443,
    }


def test_compile_prebuilds_the_prompts_under_the_public_url() -> None:
    """The prompt of each turn, its Gather posting to /t/<tenant>/voice?turn=N under the public URL."""
    call = _compile(max_turns=2, base_url="http://127.0.0.1:9999/")
    assert call.url == "http://127.0.0.1:9999/v1/chat/completions"
    assert sorted(call.prompts) == [2, 3]
    gather = _root(call.prompts[2])[0]
    assert gather.get("action") == "https://gw.example.com/edge/t/acme/voice?turn=2"
    assert [(c.tag, c.text) for c in gather] == [("Say", llm.DEFAULT_PROMPT)]
    assert [c.text for c in _root(call.farewell) if c.tag == "Say"] == [llm.DEFAULT_CLOSING]


def test_compile_without_a_public_url_uses_relative_actions() -> None:
    """No public URL: the Gather posts to ?turn=N, resolved by Twilio against the current URL."""
    assert _root(_compile(public_url=None).prompts[2])[0].get("action") == "?turn=2"


def test_compile_needs_the_api_key_variable() -> None:
    """An unset variable is a load error naming it."""
    value = llm.Llm.model_validate({"model": "m", "system": "s", "api_key_env": "NOT_SET_ANYWHERE"})
    with pytest.raises(ValueError, match="environment variable NOT_SET_ANYWHERE is not set"):
        ACTIONS["llm"].compile(value, CompileContext("acme", env=ENV))


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"max_tokens": 0}, id="max-tokens-0"),
        pytest.param({"max_tokens": 4097}, id="max-tokens-over"),
        pytest.param({"timeout_ms": 15_001}, id="timeout-over-twilio"),
        pytest.param({"base_url": "ftp://x"}, id="not-http"),
        pytest.param({"api_key_env": "sk-pasted-key"}, id="a-key-not-a-name"),
        pytest.param({"max_turns": 0}, id="no-turns"),
        pytest.param({"temperature": 3.0}, id="temperature-over-2"),
        pytest.param({"stream": True}, id="unknown-key"),
    ],
)
def test_schema_refuses(values: dict[str, object]) -> None:
    """Out-of-range numbers, a URL that is not http(s), a pasted key, unknown keys: the error is
    at that key."""
    with pytest.raises(ValidationError) as caught:
        llm.Llm.model_validate({"model": "m", "system": "s", "api_key_env": "K"} | values)
    assert [error["loc"] for error in caught.value.errors()] == [(next(iter(values)),)]


def _step_span(exchange: Exchange) -> Span:
    (_, encoded) = SpanBuilder(Sampler(), "redis://x").build(2.0, "POST", "/twilio/sms", 200, 1.0, exchange)
    span = Span()
    span.ParseFromString(encoded)
    return span


def test_a_step_with_attributes_is_a_span_with_them(clock: FakeClock) -> None:
    """Its own attributes replace the store's (no db.system.name on a model call); error.type
    marks it failed."""
    exchange = Exchange("sms", PolicySet.of({}), clock)
    exchange.timed("chat m", 0.25, clock(), None, {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 3})
    span = _step_span(exchange)
    assert (span.name, span.kind) == ("chat m", Span.SPAN_KIND_CLIENT)
    assert attributes(span.attributes) == {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": 3}
    assert span.status.code == Status.STATUS_CODE_UNSET

    failed = Exchange("sms", PolicySet.of({}), clock)
    failed.timed("chat m", 0.25, clock(), None, {"error.type": "timeout"})
    assert _step_span(failed).status.code == Status.STATUS_CODE_ERROR


def test_a_step_without_attributes_keeps_the_store_attribute(clock: FakeClock) -> None:
    """The existing three- and four-argument calls are unchanged: a Redis step names its database."""
    exchange = Exchange("sms", PolicySet.of({}), clock)
    exchange.timed("limits", 0.001, clock())
    assert attributes(_step_span(exchange).attributes) == {"db.system.name": "redis"}
