"""The policy schema: defaults, aliases, patterns and the keys it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gateway.actions import ACTIONS, static, stream
from gateway.policy import model

SID = "AC0123456789abcdef0123456789abcdef"
ACCOUNT = {"account_sid": SID, "auth_token_env": "TOKEN"}


def _error_types(cls: type[BaseModel], data: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        cls.model_validate(data)
    return [(e["loc"], e["type"]) for e in caught.value.errors()]


def test_minimal_policy_defaults() -> None:
    """Only `twilio` is required; everything else defaults to empty, unlimited and local."""
    policy = model.Policy.model_validate({"twilio": ACCOUNT})
    assert policy.numbers == []
    assert policy.routes == []
    assert policy.limits == model.Limits()
    assert (policy.fallback.voice, policy.fallback.sms) == (None, None)
    assert (policy.refusal.voice, policy.refusal.sms) == (None, None)
    assert policy.api is None
    assert policy.twilio.previous_auth_token_env is None
    assert policy.prices == model.Prices()
    assert policy.budget is None


def test_limits_defaults() -> None:
    """No bucket, no concurrency limit, and `local` when the shared store fails."""
    limits = model.Limits()
    assert (limits.webhooks, limits.voice, limits.sms, limits.api) == (None, None, None, None)
    assert (limits.concurrent_calls, limits.concurrent_streams) == (None, None)
    assert limits.on_store_failure == "local"


def test_bucket_defaults_to_per_second_and_no_explicit_burst() -> None:
    """`per` defaults to second; burst stays None here (the loader derives it from the rate)."""
    rule = model.BucketRule.model_validate({"rate": 3})
    assert (rule.rate, rule.per, rule.burst) == (3.0, "second", None)


def test_period_names_map_to_seconds() -> None:
    """second, minute and hour are the only periods, in seconds."""
    assert model.PER_SECONDS == {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def test_action_defaults() -> None:
    """say hangs up, reject is busy, redirect POSTs, stream has no name/track/parameters and
    bridged limits of 4 hours and 10 reserved minutes."""
    say = static.Say(text="hi")
    assert (say.voice, say.language, say.hangup) == (None, None, True)
    assert static.Reject().reason == "busy"
    assert static.Redirect(url="https://x.example/voice").method == "POST"
    bridged = stream.Stream(upstream="wss://rt.example/s")
    assert (bridged.url, bridged.name, bridged.track, bridged.parameters) == (None, None, None, {})
    assert (bridged.max_duration_s, bridged.reserve_minutes) == (4 * 3600, 10)


def test_api_defaults() -> None:
    """The JWT audience defaults to `switchyard`; the issuer is not checked unless given."""
    api = model.Api.model_validate({"jwt_secret_env": "JWT"})
    assert (api.audience, api.issuer) == ("switchyard", None)


def test_from_is_the_yaml_key_of_from_() -> None:
    """`from` (a Python keyword) fills the field from_."""
    match = model.Match.model_validate({"kind": "voice", "from": "^\\+1900"})
    assert match.from_ == "^\\+1900"


def test_python_name_from_underscore_is_not_a_yaml_key() -> None:
    """Writing `from_` in YAML is an unknown key, reported under that name by pydantic."""
    assert _error_types(model.Match, {"kind": "voice", "from_": "x"}) == [(("from_",), "extra_forbidden")]


def test_regex_errors_name_the_yaml_key() -> None:
    """A bad `from` regex is reported at loc `from`, not the Python name."""
    assert _error_types(model.Match, {"kind": "voice", "from": "("}) == [(("from",), "value_error")]


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        pytest.param(model.Policy, {"twilio": ACCOUNT}, id="Policy"),
        pytest.param(model.TwilioAccount, ACCOUNT, id="TwilioAccount"),
        pytest.param(model.BucketRule, {"rate": 1}, id="BucketRule"),
        pytest.param(model.Limits, {}, id="Limits"),
        pytest.param(model.Match, {"kind": "sms"}, id="Match"),
        pytest.param(static.Say, {"text": "hi"}, id="Say"),
        pytest.param(static.Reject, {}, id="Reject"),
        pytest.param(static.Redirect, {"url": "https://x.example"}, id="Redirect"),
        pytest.param(stream.Stream, {"url": "wss://x.example/s"}, id="Stream"),
        pytest.param(static.Message, {"text": "hi"}, id="Message"),
        pytest.param(model.Route, {"match": {"kind": "voice"}, "reject": {}}, id="Route"),
        pytest.param(model.ByKind, {}, id="ByKind"),
        pytest.param(model.Api, {"jwt_secret_env": "JWT"}, id="Api"),
        pytest.param(model.Prices, {}, id="Prices"),
        pytest.param(model.ModelPrice, {}, id="ModelPrice"),
        pytest.param(model.Budget, {"daily_usd": 1}, id="Budget"),
    ],
)
def test_every_model_forbids_unknown_keys(cls: type[BaseModel], data: dict[str, Any]) -> None:
    """Each level of the schema refuses a key it does not define."""
    cls.model_validate(data)
    assert _error_types(cls, {**data, "surprise": 1}) == [(("surprise",), "extra_forbidden")]


def test_models_are_frozen() -> None:
    """A loaded policy cannot be changed in place."""
    rule = model.BucketRule(rate=1)
    with pytest.raises(ValidationError):
        rule.rate = 2


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        pytest.param("+15550100001", True, id="us"),
        pytest.param("+447700900123", True, id="uk"),
        pytest.param("+12", True, id="shortest"),
        pytest.param("+123456789012345", True, id="fifteen-digits"),
        pytest.param("+1234567890123456", False, id="sixteen-digits"),
        pytest.param("15550100001", False, id="no-plus"),
        pytest.param("+05550100001", False, id="leading-zero"),
        pytest.param("+1 555 010 0001", False, id="spaces"),
    ],
)
def test_numbers_are_e164(number: str, valid: bool) -> None:
    """`numbers` and `to` take E.164: +, a non-zero digit, at most 15 digits."""
    data = {"kind": "voice", "to": [number]}
    if valid:
        assert model.Match.model_validate(data).to == [number]
    else:
        assert _error_types(model.Match, data) == [(("to", 0), "string_pattern_mismatch")]


def test_numbers_must_be_unique_in_a_file() -> None:
    """A number listed twice in one policy is refused on `numbers`."""
    data = {"twilio": ACCOUNT, "numbers": ["+15550100001", "+15550100001"]}
    assert _error_types(model.Policy, data) == [(("numbers",), "value_error")]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("ACME_TOKEN", True, id="upper"),
        pytest.param("_PRIVATE2", True, id="underscore-first"),
        pytest.param("acme_token", False, id="lower"),
        pytest.param("2FA", False, id="digit-first"),
        pytest.param("ACME-TOKEN", False, id="dash"),
    ],
)
def test_secret_keys_hold_environment_variable_names(name: str, valid: bool) -> None:
    """*_env values must look like a variable name, so a pasted secret is refused."""
    data = {"account_sid": SID, "auth_token_env": name}
    if valid:
        assert model.TwilioAccount.model_validate(data).auth_token_env == name
    else:
        assert _error_types(model.TwilioAccount, data) == [(("auth_token_env",), "string_pattern_mismatch")]


def test_account_sid_accepts_either_hex_case() -> None:
    """AC followed by 32 hex digits, upper or lower case."""
    upper = "AC" + "ABCDEF0123456789" * 2
    assert model.TwilioAccount.model_validate({**ACCOUNT, "account_sid": upper}).account_sid == upper


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        pytest.param("wss://rt.example.com/stream", True, id="wss"),
        pytest.param("ws://127.0.0.1:9000/stream", True, id="ws"),
        pytest.param("wss://rt.example.com/stream?a=1", False, id="query"),
        pytest.param("wss://rt.example.com/stream#x", False, id="fragment"),
        pytest.param("https://rt.example.com/stream", False, id="https"),
    ],
)
def test_stream_url_is_websocket_without_query(url: str, valid: bool) -> None:
    """Stream URLs are ws(s):// without ? or #, since Twilio drops a query string."""
    if valid:
        assert stream.Stream(url=url).url == url
        assert stream.Stream(upstream=url).upstream == url
    else:
        assert _error_types(stream.Stream, {"url": url}) == [(("url",), "string_pattern_mismatch")]


def test_stream_names_exactly_one_target() -> None:
    """A stream route gives `url` (Twilio to the runtime) or `upstream` (bridged), never both or neither."""
    for data in ({}, {"url": "wss://a.example/s", "upstream": "wss://b.example/s"}):
        with pytest.raises(ValidationError, match="give `upstream`"):
            stream.Stream.model_validate(data)


def test_stream_parameters_the_gateway_sets_are_refused() -> None:
    """`tenant` and the admission parameter are the gateway's: a policy may not set them."""
    for name in ("tenant", "switchyard_admission"):
        with pytest.raises(ValidationError, match="set by the gateway"):
            stream.Stream(url="wss://a.example/s", parameters={name: "x"})


def test_message_text_is_at_most_1600_characters() -> None:
    """Twilio's message body limit: 1600 characters load, 1601 do not."""
    assert len(static.Message(text="a" * 1600).text) == 1600
    assert _error_types(static.Message, {"text": "a" * 1601}) == [(("text",), "string_too_long")]


def test_actions_are_the_routes_action_fields() -> None:
    """The Route schema's action fields are exactly the registry's actions, in documentation order."""
    assert tuple(ACTIONS) == ("say", "reject", "redirect", "stream", "message", "twiml", "upstream", "llm")
    assert set(ACTIONS) == set(model.Route.model_fields) - {"name", "match", "fallback"}


@pytest.mark.parametrize(
    ("kind", "action", "ok"),
    [
        pytest.param("voice", {"say": {"text": "hi"}}, True, id="voice-say"),
        pytest.param("voice", {"reject": {}}, True, id="voice-reject"),
        pytest.param("voice", {"redirect": {"url": "https://x.example"}}, True, id="voice-redirect"),
        pytest.param("voice", {"stream": {"url": "wss://x.example/s"}}, True, id="voice-stream"),
        pytest.param("voice", {"twiml": "<Response/>"}, True, id="voice-twiml"),
        pytest.param("voice", {"message": {"text": "hi"}}, False, id="voice-message"),
        pytest.param("sms", {"message": {"text": "hi"}}, True, id="sms-message"),
        pytest.param("sms", {"twiml": "<Response/>"}, True, id="sms-twiml"),
        pytest.param("sms", {"say": {"text": "hi"}}, False, id="sms-say"),
        pytest.param("sms", {"reject": {}}, False, id="sms-reject"),
        pytest.param("sms", {"redirect": {"url": "https://x.example"}}, False, id="sms-redirect"),
        pytest.param("sms", {"stream": {"url": "wss://x.example/s"}}, False, id="sms-stream"),
    ],
)
def test_actions_allowed_per_kind(kind: str, action: dict[str, Any], ok: bool) -> None:
    """Voice routes take say/reject/redirect/stream/twiml; sms routes take message/twiml."""
    data = {"match": {"kind": kind}, **action}
    if ok:
        model.Route.model_validate(data)
    else:
        assert _error_types(model.Route, data) == [((), "value_error")]


def test_body_only_matches_sms() -> None:
    """`body` on an sms match is fine; on a voice match it is refused."""
    assert model.Match(kind="sms", body="menu").body == "menu"
    assert _error_types(model.Match, {"kind": "voice", "body": "menu"}) == [((), "value_error")]


def test_prices_default_to_zero() -> None:
    """No built-in prices: every price not given is 0 and no model is priced."""
    prices = model.Prices()
    assert (prices.webhook, prices.voice_minute, prices.stream_minute, prices.sms_segment) == (0, 0, 0, 0)
    assert prices.models == {}
    assert model.ModelPrice() == model.ModelPrice(input_per_1m=0, output_per_1m=0)


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        pytest.param({"webhook": -0.0001}, ("webhook",), "greater_than_equal", id="negative"),
        pytest.param({"voice_minute": float("inf")}, ("voice_minute",), "finite_number", id="infinite"),
        pytest.param({"sms_segment": float("nan")}, ("sms_segment",), "finite_number", id="nan"),
        pytest.param({"stream_minute": "0.004"}, ("stream_minute",), "float_type", id="quoted"),
        pytest.param({"webhook": True}, ("webhook",), "float_type", id="boolean"),
        pytest.param(
            {"models": {"m": {"input_per_1m": -1}}},
            ("models", "m", "input_per_1m"),
            "greater_than_equal",
            id="negative-model-price",
        ),
        pytest.param({"models": {"": {}}}, ("models", "", "[key]"), "string_too_short", id="empty-model-name"),
    ],
)
def test_prices_are_finite_non_negative_numbers(data: dict[str, Any], loc: tuple[str, ...], kind: str) -> None:
    """A price is a number >= 0 and finite, written as a number; a model needs a name."""
    assert _error_types(model.Prices, data) == [(loc, kind)]


def test_zero_prices_are_allowed() -> None:
    """0 is a price (free), unlike a rate or a budget."""
    assert model.Prices.model_validate({"sms_segment": 0}).sms_segment == 0


@pytest.mark.parametrize(
    ("data", "loc", "kind"),
    [
        pytest.param({}, ("daily_usd",), "missing", id="missing"),
        pytest.param({"daily_usd": 0}, ("daily_usd",), "greater_than", id="zero"),
        pytest.param({"daily_usd": float("inf")}, ("daily_usd",), "finite_number", id="infinite"),
        pytest.param(
            {"daily_usd": 5, "refusal": {"fax": "<Response/>"}},
            ("refusal", "fax"),
            "extra_forbidden",
            id="refusal-kind",
        ),
    ],
)
def test_budget_needs_a_positive_finite_cap(data: dict[str, Any], loc: tuple[str, ...], kind: str) -> None:
    """daily_usd is required, > 0 and finite; the refusal has only voice and sms."""
    assert _error_types(model.Budget, data) == [(loc, kind)]


def test_budget_refusal_defaults_to_none() -> None:
    """Without a budget refusal the loader's busy reject / empty reply apply."""
    budget = model.Budget.model_validate({"daily_usd": 200})
    assert (budget.daily_usd, budget.refusal.voice, budget.refusal.sms) == (200.0, None, None)
