"""YAML policy files → Tenants: each failure mode has a fixture and names its file and key path."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.actions.stream import StreamAdmission
from gateway.errors import PolicyError, PolicyProblem
from gateway.limits.base import Rule
from gateway.policy.loader import BUCKETS_BY_KIND, LoadContext, load_dir, load_file
from gateway.policy.tenant import CompiledRoute, Tenant
from gateway.protocol import twiml
from gateway.telemetry.cost import ModelPrice, Prices
from tests.support.policies import ENV, FIXTURES, NO_PUBLIC_URL, PUBLIC, VALID

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


class Prefix(str):
    """An expected message known only up to here (the rest comes from re, expat or PyYAML)."""

    __slots__ = ()


def _matches(message: str, expected: str) -> bool:
    return message.startswith(expected) if isinstance(expected, Prefix) else message == expected


def _problems(path: Path, context: LoadContext = NO_PUBLIC_URL) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_file(path, context)
    return caught.value


def _tenants() -> dict[str, Tenant]:
    return load_dir(VALID, PUBLIC)


ROOT = "the file must hold a mapping of keys (twilio, numbers, ...)"
ONE_ACTION = "a route needs exactly one of say, reject, redirect, stream, message, twiml, upstream, llm"
FAILURES = [
    pytest.param("unknown-top-key.yaml", "colour", "unknown key", id="unknown-top-key"),
    pytest.param("unknown-nested-key.yaml", "limits.webhooks.burts", "unknown key", id="unknown-nested-key"),
    pytest.param("rate-zero.yaml", "limits.voice.rate", Prefix("must be > 0"), id="rate-zero"),
    pytest.param("burst-zero.yaml", "limits.sms.burst", "must be >= 1", id="burst-zero"),
    pytest.param(
        "bad-per.yaml",
        "limits.webhooks.per",
        "Input should be 'second', 'minute' or 'hour'",
        id="bad-per",
    ),
    pytest.param(
        "bad-on-store-failure.yaml",
        "limits.on_store_failure",
        "Input should be 'local', 'open' or 'closed'",
        id="bad-on-store-failure",
    ),
    pytest.param("concurrent-zero.yaml", "limits.concurrent_streams", "must be >= 1", id="concurrent-zero"),
    pytest.param(
        "bad-number.yaml",
        "numbers.1",
        "'5550100002' does not match ^\\+[1-9][0-9]{1,14}$",
        id="bad-number",
    ),
    pytest.param("unquoted-number.yaml", "numbers.0", "Input should be a valid string", id="unquoted-number"),
    pytest.param(
        "duplicate-number-in-file.yaml",
        "numbers",
        "+15550100001 is listed twice",
        id="duplicate-number-in-file",
    ),
    pytest.param(
        "bad-account-sid.yaml",
        "twilio.account_sid",
        "'AC123' does not match ^AC[0-9a-fA-F]{32}$",
        id="bad-account-sid",
    ),
    pytest.param(
        "bad-env-name.yaml",
        "twilio.auth_token_env",
        "'s3cr3t-token' does not match ^[A-Z_][A-Z0-9_]*$",
        id="bad-env-name",
    ),
    pytest.param("missing-twilio.yaml", "twilio", "required key is missing", id="missing-twilio"),
    pytest.param(
        "route-two-actions.yaml",
        "routes.0",
        f"{ONE_ACTION} (found: say, reject)",
        id="route-two-actions",
    ),
    pytest.param("route-no-action.yaml", "routes.0", f"{ONE_ACTION} (found: none)", id="route-no-action"),
    pytest.param("route-no-match.yaml", "routes.0.match", "required key is missing", id="route-no-match"),
    pytest.param("bad-kind.yaml", "routes.0.match.kind", "Input should be 'voice' or 'sms'", id="bad-kind"),
    pytest.param(
        "sms-route-with-say.yaml",
        "routes.0",
        "action 'say' answers a call; an sms route can use message, twiml, upstream or llm",
        id="sms-route-with-say",
    ),
    pytest.param(
        "voice-route-with-message.yaml",
        "routes.0",
        "action 'message' replies to an SMS; a voice route can use say, reject, redirect, stream, twiml, upstream"
        " or llm",
        id="voice-route-with-message",
    ),
    pytest.param("body-on-voice.yaml", "routes.0.match", "'body' can only match kind: sms", id="body-on-voice"),
    pytest.param(
        "bad-regex.yaml",
        "routes.1.match.from",
        Prefix("not a valid regular expression: "),
        id="bad-regex",
    ),
    pytest.param(
        "bad-body-regex.yaml",
        "routes.0.match.body",
        Prefix("not a valid regular expression: "),
        id="bad-body-regex",
    ),
    pytest.param(
        "bad-reject-reason.yaml",
        "routes.0.reject.reason",
        "Input should be 'busy' or 'rejected'",
        id="bad-reject-reason",
    ),
    pytest.param(
        "redirect-not-http.yaml",
        "routes.0.redirect.url",
        "'ftp://ivr.example.com/voice' does not match ^https?://",
        id="redirect-not-http",
    ),
    pytest.param(
        "say-empty-text.yaml",
        "routes.0.say.text",
        "String should have at least 1 character",
        id="say-empty-text",
    ),
    pytest.param(
        "bad-twiml.yaml",
        "routes.0.twiml",
        Prefix("not well-formed TwiML: mismatched tag"),
        id="bad-twiml",
    ),
    pytest.param(
        "twiml-wrong-root.yaml",
        "routes.0.twiml",
        "TwiML must have <Response> as its root, not <Message>",
        id="twiml-wrong-root",
    ),
    pytest.param(
        "bad-route-fallback.yaml",
        "routes.0.fallback",
        Prefix("not well-formed TwiML: "),
        id="bad-route-fallback",
    ),
    pytest.param(
        "bad-refusal.yaml",
        "refusal.voice",
        "TwiML must have <Response> as its root, not <Reject>",
        id="bad-refusal",
    ),
    pytest.param(
        "bad-fallback.yaml",
        "fallback.sms",
        Prefix("not well-formed TwiML: no element found"),
        id="bad-fallback",
    ),
    pytest.param(
        "stream-with-query.yaml",
        "routes.0.stream.url",
        "'wss://runtime.example.com/stream?agent=triage' does not match ^wss?://[^?#]+$",
        id="stream-with-query",
    ),
    pytest.param(
        "stream-bridged.yaml",
        "routes.0.stream",
        "a bridged stream needs the gateway's --public-url (Twilio connects to it)",
        id="stream-bridged",
    ),
    pytest.param(
        "yaml-syntax.yaml",
        "",
        # libyaml's wording (PyYAML's own: "expected ',' or ']', but got '<stream end>'").
        "line 4, column 1: did not find expected ',' or ']'",
        id="yaml-syntax",
    ),
    pytest.param("not-a-mapping.yaml", "", ROOT, id="not-a-mapping"),
    pytest.param("empty.yaml", "", ROOT, id="empty"),
    pytest.param(
        "short-jwt-secret.yaml",
        "api.jwt_secret_env",
        "FIXTURE_SHORT_JWT_SECRET holds 31 bytes; HS256 needs at least 32",
        id="short-jwt-secret",
    ),
    pytest.param(
        "api-key-alg-mismatch.yaml",
        "api.keys.0",
        "alg RS256 takes public_key_env or public_key_file",
        id="api-key-alg-mismatch",
    ),
    pytest.param("api-no-key.yaml", "api", "api needs a key: jwt_secret_env, keys or jwks_url", id="api-no-key"),
    pytest.param(
        "api-key-file-missing.yaml",
        "api.keys.0.public_key_file",
        "cannot read keys/nowhere.pem: No such file or directory",
        id="api-key-file-missing",
    ),
    pytest.param(
        "Bad_Name.yaml",
        "",
        "file name must be a tenant id matching ^[a-z0-9][a-z0-9_-]{0,62}$",
        id="invalid-tenant-id",
    ),
    pytest.param(
        "from-underscore.yaml",
        "routes.0.match.from_",
        "unknown key",
        id="from-underscore",
    ),
    pytest.param(
        "duplicate-key.yaml",
        "",
        Prefix("line "),
        id="duplicate-key",
    ),
    pytest.param("bad-price-negative.yaml", "prices.sms_segment", "must be >= 0", id="bad-price-negative"),
    pytest.param(
        "price-infinite.yaml",
        "prices.voice_minute",
        "Input should be a finite number",
        id="price-infinite",
    ),
    pytest.param(
        "unknown-price-key.yaml",
        "prices.models.gpt-4o-mini.output_per_million",
        "unknown key",
        id="unknown-price-key",
    ),
    pytest.param(
        "price-exponent-text.yaml",
        "prices.webhook",
        "'1e-4' is text, not a number (YAML needs a dot in an exponent: 1.0e-4)",
        id="price-exponent-text",
    ),
    pytest.param("budget-zero.yaml", "budget.daily_usd", "must be > 0", id="budget-zero"),
    pytest.param(
        "status-events-nowhere.yaml",
        "outbound",
        "status_events other than completed need a status_callback to forward them to",
        id="status-events-nowhere",
    ),
    pytest.param(
        "status-callback-not-http.yaml",
        "outbound.status_callback",
        Prefix("'ftp://runtime.example/status' does not match ^https?://"),
        id="status-callback-not-http",
    ),
    pytest.param(
        "status-callback-bad-port.yaml",
        "outbound.status_callback",
        Prefix("not a URL the gateway can send to: "),
        id="status-callback-bad-port",
    ),
    pytest.param(
        "bad-budget-refusal.yaml",
        "budget.refusal.sms",
        "TwiML must have <Response> as its root, not <Message>",
        id="bad-budget-refusal",
    ),
]


@pytest.mark.parametrize(("file", "key", "message"), FAILURES)
def test_each_failure_names_file_key_and_reason(file: str, key: str, message: str) -> None:
    """A bad file fails with exactly one problem carrying its file name, key path and message."""
    error = _problems(FIXTURES / file)
    assert len(error.problems) == 1, error
    problem = error.problems[0]
    assert (problem.file, problem.key) == (file, key)
    assert _matches(problem.message, message), problem.message
    assert str(error) == (f"{file}: {key}: {problem.message}" if key else f"{file}: {problem.message}")


def test_problem_text_is_file_colon_key_colon_message() -> None:
    """PolicyProblem renders as `file: key: message`, and `file: message` when no key applies."""
    assert str(PolicyProblem("a.yaml", "limits.voice.rate", "must be > 0")) == (
        "a.yaml: limits.voice.rate: must be > 0"
    )
    assert str(PolicyProblem("a.yaml", "", "line 1, column 2: oops")) == "a.yaml: line 1, column 2: oops"


def test_infinite_rate_is_a_policy_problem() -> None:
    """`rate: .inf` is refused as a PolicyError on its key, not a crash of the loader."""
    error = _problems(FIXTURES / "rate-infinite.yaml")
    assert [(p.file, p.key) for p in error.problems] == [("rate-infinite.yaml", "limits.webhooks.rate")]


def test_every_missing_secret_is_listed_with_its_variable() -> None:
    """Two unset variables give two problems, each naming the file, the key and the variable."""
    error = _problems(FIXTURES / "env-missing.yaml")
    assert [str(p) for p in error.problems] == [
        "env-missing.yaml: twilio.auth_token_env: environment variable FIXTURE_UNSET_TOKEN is not set",
        "env-missing.yaml: twilio.previous_auth_token_env: environment variable FIXTURE_UNSET_TOKEN_OLD is not set",
    ]


def test_an_empty_variable_counts_as_missing() -> None:
    """A secret variable set to the empty string is reported like an unset one."""
    error = _problems(VALID / "beta.yml", LoadContext(env={**ENV, "FIXTURE_BETA_AUTH_TOKEN": ""}))
    assert [str(p) for p in error.problems] == [
        "beta.yml: twilio.auth_token_env: environment variable FIXTURE_BETA_AUTH_TOKEN is not set"
    ]


def test_jwt_secret_of_exactly_32_bytes_is_enough() -> None:
    """The HS256 minimum is inclusive: a 32-byte secret loads, and becomes the tenant's API key."""
    tenant = load_file(
        FIXTURES / "short-jwt-secret.yaml", LoadContext(env={**ENV, "FIXTURE_SHORT_JWT_SECRET": "k" * 32})
    )
    assert tenant.api is not None
    assert [(k.kid, k.algorithm, k.key) for k in tenant.api.keys] == [(None, "HS256", b"k" * 32)]


def test_jwt_secret_length_is_counted_in_bytes() -> None:
    """Sixteen two-byte characters are 32 bytes of UTF-8, which is enough."""
    tenant = load_file(
        FIXTURES / "short-jwt-secret.yaml", LoadContext(env={**ENV, "FIXTURE_SHORT_JWT_SECRET": "é" * 16})
    )
    assert tenant.api is not None and len(tenant.api.keys[0].key) == 32


def _stream(route: CompiledRoute) -> tuple[str, list[tuple[str, str]]]:
    """The <Stream> url and parameters a route answers (a bridged one with a stand-in token)."""
    reply = route.reply
    if isinstance(route.call, StreamAdmission):
        reply = route.call.head + b"TOKEN" + route.call.tail
    assert reply is not None
    stream = ET.fromstring(reply).find("./Connect/Stream")
    assert stream is not None
    params = [(p.get("name", ""), p.get("value", "")) for p in stream.findall("Parameter")]
    return stream.get("url", ""), params


def test_bridged_stream_goes_to_the_gateway_itself() -> None:
    """With a public URL, a bridged stream targets wss://<host>/t/<tenant>/stream: tenant first,
    the admission token last."""
    tenant = load_file(FIXTURES / "stream-bridged.yaml", PUBLIC)
    url, params = _stream(tenant.routes[0])
    assert url == "wss://gw.example.com/t/stream-bridged/stream"
    assert params == [("tenant", "stream-bridged"), ("agent", "triage"), ("switchyard_admission", "TOKEN")]


def test_stream_default_url_keeps_the_public_url_path_prefix() -> None:
    """A public URL with a path prefix (a proxy that strips it) keeps the prefix in the stream URL."""
    context = LoadContext(env=ENV, public_url="https://gw.example.com/edge")
    url, _ = _stream(load_file(FIXTURES / "stream-bridged.yaml", context).routes[0])
    assert url == "wss://gw.example.com/edge/t/stream-bridged/stream"


def test_stream_default_url_ignores_a_trailing_slash() -> None:
    """`--public-url https://host/` gives the same stream URL as `https://host`."""
    context = LoadContext(env=ENV, public_url="https://gw.example.com/")
    url, _ = _stream(load_file(FIXTURES / "stream-bridged.yaml", context).routes[0])
    assert url == "wss://gw.example.com/t/stream-bridged/stream"


def test_policy_cannot_forge_the_tenant_parameter() -> None:
    """A `tenant` stream parameter is refused, or at least never replaces the real tenant id."""
    path = FIXTURES / "stream-tenant-parameter.yaml"
    refused: PolicyError | None = None
    try:
        tenant = load_file(path, PUBLIC)
    except PolicyError as error:
        refused = error
    if refused is not None:
        assert refused.problems[0].key.startswith("routes.0.stream.parameters")
        return
    _, params = _stream(tenant.routes[0])
    assert dict(params)["tenant"] == "stream-tenant-parameter"


def test_valid_directory_loads_yaml_and_yml_files() -> None:
    """Both suffixes are policy files, and the file stem is the tenant id."""
    tenants = _tenants()
    assert sorted(tenants) == ["alpha", "beta"]
    assert tenants["beta"].file == "beta.yml"


def test_buckets_are_charged_by_the_kinds_their_names_say() -> None:
    """webhooks → voice+sms, voice → voice, sms → sms, api → API, llm → llm calls; status charges nothing."""
    rules = _tenants()["alpha"].rules
    names = {kind: tuple(rule.name for rule in rules[kind]) for kind in rules}
    assert names == {
        "voice": ("webhooks", "voice"),
        "sms": ("webhooks", "sms"),
        "status": (),
        "api": ("api",),
        "llm": (),
    }
    assert dict(BUCKETS_BY_KIND) == {
        "voice": ("webhooks", "voice"),
        "sms": ("webhooks", "sms"),
        "status": (),
        "api": ("api",),
        "llm": ("llm",),
    }


def test_rules_carry_rate_period_in_seconds_and_burst() -> None:
    """`per` becomes seconds; burst defaults to the rate rounded down, and is at least 1."""
    rules = {rule.name: rule for kind in ("voice", "sms", "api") for rule in _tenants()["alpha"].rules[kind]}
    assert rules == {
        "webhooks": Rule("webhooks", rate=10.0, per=1.0, burst=20),
        "voice": Rule("voice", rate=2.5, per=60.0, burst=2),
        "sms": Rule("sms", rate=0.5, per=1.0, burst=1),
        "api": Rule("api", rate=30.0, per=3600.0, burst=3),
    }


def test_no_buckets_means_unlimited() -> None:
    """A policy without limits has no rule for any kind, so nothing is ever charged."""
    beta = _tenants()["beta"]
    assert dict(beta.rules) == {"voice": (), "sms": (), "status": (), "api": (), "llm": ()}


def test_defaults_of_a_minimal_policy() -> None:
    """Without overrides: busy reject / empty refusal, the stock fallbacks, local failover, no API."""
    beta = _tenants()["beta"]
    assert dict(beta.refusal) == {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}
    assert dict(beta.fallback) == {"voice": twiml.VOICE_FALLBACK, "sms": twiml.EMPTY}
    assert beta.on_store_failure == "local"
    assert (beta.concurrent_calls, beta.concurrent_streams, beta.api) == (None, None, None)
    assert beta.keys == (b"beta-token",)
    assert beta.numbers == frozenset({"+15550200001"})
    assert beta.account_sid == "AC00000000000000000000000000000b02"
    assert (beta.prices, beta.daily_budget) == (Prices(), None)
    assert beta.prices.free
    assert dict(beta.budget_refusal) == {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}


def test_overrides_of_a_full_policy() -> None:
    """Refusal/fallback TwiML gets the XML declaration; limits, keys and API settings are kept."""
    alpha = _tenants()["alpha"]
    assert alpha.refusal["voice"] == (DECLARATION + b"<Response><Say>All lines are busy.</Say><Hangup/></Response>")
    assert alpha.refusal["sms"] == twiml.EMPTY
    assert alpha.fallback == {
        "voice": twiml.VOICE_FALLBACK,
        "sms": DECLARATION + b"<Response><Message>Try again later.</Message></Response>",
    }
    assert alpha.on_store_failure == "closed"
    assert (alpha.concurrent_calls, alpha.concurrent_streams) == (2, 4)
    assert alpha.keys == (b"alpha-token", b"alpha-token-old")
    assert alpha.api is not None
    assert (alpha.api.keys[0].key, alpha.api.audience, alpha.api.issuer) == (
        b"j" * 32,
        "switchyard",
        "alpha-backend",
    )


def test_routes_compile_in_order_with_names_and_fallbacks() -> None:
    """Routes keep file order; an unnamed one is `routes.N`; its fallback is its own or the kind's."""
    alpha = _tenants()["alpha"]
    summary = [(r.name, r.kind, r.action) for r in alpha.routes]
    assert summary == [
        ("blocked", "voice", "reject"),
        ("closed-line", "voice", "say"),
        ("routes.2", "voice", "stream"),
        ("menu", "sms", "message"),
        ("other-sms", "sms", "twiml"),
    ]
    fallbacks = [r.fallback for r in alpha.routes]
    assert fallbacks[0] == fallbacks[1] == twiml.VOICE_FALLBACK
    assert fallbacks[2] == DECLARATION + b"<Response><Say>The agent is away.</Say></Response>"
    assert fallbacks[3] == fallbacks[4] == alpha.fallback["sms"]


def test_route_matchers_are_compiled() -> None:
    """`to` becomes a set, `from`/`body` compiled regexes; absent ones stay None."""
    blocked, closed, stream, menu, _ = _tenants()["alpha"].routes
    assert blocked.from_ is not None and blocked.from_.pattern == "^\\+1900"
    assert closed.to == frozenset({"+15550100002"})
    assert (stream.to, stream.from_, stream.body) == (None, None, None)
    assert menu.body is not None and menu.body.search("MENU please")


def test_numbers_claimed_by_two_files_name_both() -> None:
    """The second file (in name order) is at fault, and the message names the first owner."""
    with pytest.raises(PolicyError) as caught:
        load_dir(FIXTURES / "dup-numbers", NO_PUBLIC_URL)
    assert str(caught.value) == "second.yaml: numbers: +15550300001 is already owned by first.yaml"


def test_directory_errors_list_every_file(tmp_path: Path) -> None:
    """load_dir reports the problems of all bad files at once, in file-name order."""
    shutil.copytree(VALID, tmp_path, dirs_exist_ok=True)
    for name in ("rate-zero.yaml", "bad-kind.yaml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    with pytest.raises(PolicyError) as caught:
        load_dir(tmp_path, PUBLIC)
    assert [(p.file, p.key) for p in caught.value.problems] == [
        ("bad-kind.yaml", "routes.0.match.kind"),
        ("rate-zero.yaml", "limits.voice.rate"),
    ]


def test_same_tenant_id_in_yaml_and_yml_is_refused(tmp_path: Path) -> None:
    """alpha.yaml and alpha.yml would both be tenant alpha: the second is refused."""
    shutil.copy(VALID / "alpha.yaml", tmp_path / "alpha.yaml")
    shutil.copy(VALID / "alpha.yaml", tmp_path / "alpha.yml")
    with pytest.raises(PolicyError) as caught:
        load_dir(tmp_path, PUBLIC)
    assert str(caught.value) == "alpha.yml: tenant 'alpha' is also defined by alpha.yaml"


def test_other_files_in_the_directory_are_ignored(tmp_path: Path) -> None:
    """Only *.yaml and *.yml files are policies: a README or a subdirectory is not."""
    shutil.copy(VALID / "beta.yml", tmp_path / "beta.yml")
    (tmp_path / "README.md").write_text("not: [yaml", encoding="utf-8")
    (tmp_path / "sub.yaml").mkdir()
    assert sorted(load_dir(tmp_path, PUBLIC)) == ["beta"]


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    """A directory without policy files is refused rather than serving no tenant."""
    with pytest.raises(PolicyError) as caught:
        load_dir(tmp_path, PUBLIC)
    assert str(caught.value) == f"{tmp_path}: holds no policy files (*.yaml)"


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """A path that is not a directory is named in the error."""
    with pytest.raises(PolicyError) as caught:
        load_dir(tmp_path / "nope", PUBLIC)
    assert str(caught.value) == f"{tmp_path / 'nope'}: is not a directory"


def test_readme_example_loads_as_annotated(tmp_path: Path) -> None:
    """The complete example in policies/README.md is a valid policy that routes as its comments say."""
    readme = (FIXTURES.parents[2] / "policies" / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\n", readme.index("## A complete example")) + len("```yaml\n")
    path = tmp_path / "acme-clinic.yaml"
    path.write_text(readme[start : readme.index("```", start)], encoding="utf-8")
    env = {"ACME_TWILIO_AUTH_TOKEN": "a", "ACME_TWILIO_AUTH_TOKEN_OLD": "b", "ACME_API_JWT_SECRET": "s" * 32}
    tenant = load_file(path, LoadContext(env=env, public_url="https://gw.example.com"))
    assert [r.name for r in tenant.routes] == [
        "blocked-premium",
        "after-hours-line",
        "hours",
        "uk-callers",
        "agent",
        "anything-else",
    ]
    sms_rule = tenant.rules["sms"][-1]
    assert (sms_rule.name, sms_rule.burst) == ("sms", 60)
    url, params = _stream(tenant.routes[4])
    assert url == "wss://gw.example.com/t/acme-clinic/stream"
    assert params == [("tenant", "acme-clinic"), ("agent", "triage"), ("switchyard_admission", "TOKEN")]
    assert (tenant.prices.sms_segment, tenant.daily_budget) == (7900, 200_000_000)
    assert tenant.budget_refusal["voice"] == twiml.REJECT_BUSY


def test_prices_and_budget_become_exact_micro_dollars() -> None:
    """USD prices and the daily cap load as integer µ$, from the decimal digits written."""
    tenant = load_file(FIXTURES / "priced.yaml", NO_PUBLIC_URL)
    assert tenant.prices == Prices(
        webhook=100,
        voice_minute=8500,
        stream_minute=4000,
        sms_segment=7900,
        models={"gpt-4o-mini": ModelPrice(150_000, 600_000), "free-model": ModelPrice(0, 0)},
    )
    assert tenant.daily_budget == 200_000_000
    assert not tenant.prices.free


def test_budget_refusal_twiml_is_rendered_like_refusal() -> None:
    """budget.refusal gets the XML declaration and replaces the busy reject / empty defaults."""
    tenant = load_file(FIXTURES / "priced.yaml", NO_PUBLIC_URL)
    assert dict(tenant.budget_refusal) == {
        "voice": DECLARATION + b"<Response><Say>Our daily limit is reached.</Say><Hangup/></Response>",
        "sms": DECLARATION + b"<Response><Message>Out of credit today.</Message></Response>",
    }
    assert dict(tenant.refusal) == {"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY}


def test_a_budget_without_prices_loads_with_a_note_under_check() -> None:
    """A cap nothing counts against is legal; `check` (notes collected) says so on `budget`."""
    path = FIXTURES / "budget-without-prices.yaml"
    assert load_file(path, NO_PUBLIC_URL).daily_budget == 5_000_000
    notes: list[PolicyProblem] = []
    tenant = load_file(path, LoadContext(env=ENV, notes=notes))
    assert tenant.prices.free
    assert [str(n) for n in notes] == [
        "budget-without-prices.yaml: budget: every price is 0, so nothing counts against daily_usd"
    ]


def test_a_priced_budget_has_no_note() -> None:
    """With something priced, a budget is what it should be: no note."""
    notes: list[PolicyProblem] = []
    load_file(FIXTURES / "priced.yaml", LoadContext(env=ENV, notes=notes))
    assert notes == []


def test_a_calls_hold_is_its_reserve_minutes_at_the_voice_price(tmp_path: Path) -> None:
    """budget.call_reserve_minutes times prices.voice_minute, in µ$; 5 minutes unless said; 0 holds nothing."""
    text = (FIXTURES / "priced.yaml").read_text()
    assert load_file(FIXTURES / "priced.yaml", NO_PUBLIC_URL).call_reserve == 5 * 8500
    path = tmp_path / "held.yaml"
    path.write_text(text.replace("daily_usd: 200", "daily_usd: 200\n  call_reserve_minutes: 0"))
    assert load_file(path, NO_PUBLIC_URL).call_reserve == 0


KEYS_POLICY = """\
twilio: {account_sid: AC0123456789abcdef0123456789abcdef, auth_token_env: FIXTURE_TWILIO_AUTH_TOKEN}
api:
  keys:
    - {kid: rs-1, alg: RS256, public_key_env: FIXTURE_RS_PEM}
    - {kid: es-1, alg: ES256, public_key_file: es-1.pem}
"""


def _public_pem(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_public_keys_load_from_the_environment_and_from_files(tmp_path: Path) -> None:
    """An RS256 key from a PEM in the environment and an ES256 key from a PEM file beside the
    policies load under their kids, each pinned to its algorithm."""
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "es-1.pem").write_bytes(_public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "keys.yaml").write_text(KEYS_POLICY)
    env = {**ENV, "FIXTURE_RS_PEM": _public_pem(rs).decode()}
    tenant = load_file(tmp_path / "keys.yaml", LoadContext(env=env))
    assert tenant.api is not None
    assert [(k.kid, k.algorithm) for k in tenant.api.keys] == [("rs-1", "RS256"), ("es-1", "ES256")]
    assert tenant.api.keys[0].key.public_numbers() == rs.public_key().public_numbers()


def test_a_public_key_of_the_wrong_kind_names_its_key(tmp_path: Path) -> None:
    """An EC key given for RS256 is refused at load, with the file and the key's path."""
    (tmp_path / "es-1.pem").write_bytes(_public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "keys.yaml").write_text(KEYS_POLICY)
    env = {**ENV, "FIXTURE_RS_PEM": (tmp_path / "es-1.pem").read_text()}
    with pytest.raises(PolicyError) as refused:
        load_file(tmp_path / "keys.yaml", LoadContext(env=env))
    assert refused.value.problems == [
        PolicyProblem("keys.yaml", "api.keys.0.public_key_env", "an RS256 key must be an RSA public key")
    ]


def test_policies_are_parsed_by_libyaml_with_the_duplicate_key_check() -> None:
    """The parser is libyaml's (7.9x PyYAML's pure-Python one on policy files), and a key given
    twice is still refused with its line and column."""
    import yaml

    from gateway.policy import loader

    assert issubclass(loader._UniqueKeyLoader, yaml.CSafeLoader)
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        yaml.load("a: 1\nb:\n  c: 2\n  c: 3\n", Loader=loader._UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    mark = caught.value.problem_mark
    assert mark is not None and (mark.line + 1, mark.column + 1) == (4, 3)
    assert caught.value.problem == "key 'c' appears twice in one mapping"


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [x, 'y', 2.5, true, null, ~, 0x1f, 1e3, '1e3', 2026-12-07]\nc: {d: {e: [f]}}\n",
        "base: &b {rate: 5, per: second}\nvoice: *b\nsms: [*b, *b]\n",
        "base: &b {rate: 5}\nvoice:\n  <<: *b\n  per: minute\n",  # a merge key: PyYAML's constructor
        "s: !!set {a, b}\nbin: !!binary aGk=\n1: one\n2.5: x\nnull: n\n",
        "loop: &l [1, *l]\n",  # an anchor inside itself: PyYAML's constructor builds the cycle
        "",
    ],
    ids=["plain", "anchors", "merge-key", "set-binary-odd-keys", "recursive", "empty"],
)
def test_the_fast_constructor_builds_what_pyyaml_builds(text: str) -> None:
    """The one-walk constructor gives the same values as PyYAML's SafeLoader on every kind of node,
    handing the unusual ones (merge keys, sets, a self-referencing anchor) to PyYAML's own."""
    import yaml

    from gateway.policy import loader

    ours = yaml.load(text, Loader=loader._UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    theirs = yaml.load(text, Loader=yaml.SafeLoader)
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("text", ["a: 1\na: 2\n", "x: {k: 1, k: 2}\n", "1: a\n1: b\n", "<<: {a: 1}\nb: 1\nb: 2\n"])
def test_a_key_given_twice_is_refused_by_either_constructor(text: str) -> None:
    """The duplicate-key check holds on the fast walk and on PyYAML's path (a merge key present)."""
    import yaml

    from gateway.policy import loader

    with pytest.raises(yaml.MarkedYAMLError, match="appears twice in one mapping"):
        yaml.load(text, Loader=loader._UniqueKeyLoader)  # noqa: S506 - a SafeLoader
