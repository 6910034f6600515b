"""Route matching: first match wins, within the request's kind, on To, From and Body."""

from __future__ import annotations

import re

import pytest

from gateway.policy.loader import load_file
from gateway.policy.tenant import CompiledRoute, Tenant
from gateway.protocol import twiml
from tests.support.policies import PUBLIC, VALID


def _route(
    name: str,
    kind: str = "voice",
    *,
    to: set[str] | None = None,
    from_: str | None = None,
    body: str | None = None,
) -> CompiledRoute:
    return CompiledRoute(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        action="twiml",
        reply=twiml.EMPTY,
        fallback=twiml.EMPTY,
        to=frozenset(to) if to is not None else None,
        from_=re.compile(from_) if from_ is not None else None,
        body=re.compile(body) if body is not None else None,
    )


def _tenant(*routes: CompiledRoute) -> Tenant:
    return Tenant(
        id="t",
        file="t.yaml",
        account_sid="AC" + "0" * 32,
        keys=(b"k",),
        numbers=frozenset(),
        rules={"voice": (), "sms": (), "status": (), "api": ()},
        routes=routes,
        fallback={"voice": twiml.VOICE_FALLBACK, "sms": twiml.EMPTY},
        refusal={"voice": twiml.REJECT_BUSY, "sms": twiml.EMPTY},
    )


def _name(tenant: Tenant, kind: str, **params: str | list[str]) -> str | None:
    form = {k: v if isinstance(v, list) else [v] for k, v in params.items()}
    chosen = tenant.route(kind, form)
    return chosen.name if chosen is not None else None


def test_first_match_wins() -> None:
    """Of two routes that both match, the earlier one in the file is chosen."""
    tenant = _tenant(_route("first"), _route("second"))
    assert _name(tenant, "voice", To="+15550100001") == "first"


def test_later_route_when_earlier_does_not_match() -> None:
    """A non-matching earlier route is skipped for the next one that fits."""
    tenant = _tenant(_route("premium", from_=r"^\+1900"), _route("everyone"))
    assert _name(tenant, "voice", From="+15550109999") == "everyone"
    assert _name(tenant, "voice", From="+19005550100") == "premium"


def test_kind_filters_routes() -> None:
    """An sms route never answers a call and a voice route never answers an SMS."""
    tenant = _tenant(_route("call"), _route("text", "sms"))
    assert _name(tenant, "voice") == "call"
    assert _name(tenant, "sms") == "text"


def test_status_callbacks_match_no_route() -> None:
    """Routes are voice or sms only, so a status callback finds none."""
    assert _name(_tenant(_route("call"), _route("text", "sms")), "status") is None


def test_no_match_returns_none() -> None:
    """When no route fits, route() answers None (the caller uses the tenant's fallback)."""
    tenant = _tenant(_route("only-second-line", to={"+15550100002"}))
    assert _name(tenant, "voice", To="+15550100001") is None
    assert _name(_tenant(), "voice", To="+15550100001") is None


@pytest.mark.parametrize(
    ("params", "matched"),
    [
        pytest.param({"To": "+15550100002"}, True, id="listed"),
        pytest.param({"To": "+15550100003"}, True, id="also-listed"),
        pytest.param({"To": "+15550100001"}, False, id="not-listed"),
        pytest.param({}, False, id="missing"),
        pytest.param({"To": ["+15550100001", "+15550100002"]}, False, id="first-value-only"),
    ],
)
def test_to_is_a_list_of_exact_numbers(params: dict[str, str | list[str]], matched: bool) -> None:
    """`to` matches when the request's first To value is one of the listed numbers."""
    tenant = _tenant(_route("lines", to={"+15550100002", "+15550100003"}))
    assert (_name(tenant, "voice", **params) == "lines") is matched


@pytest.mark.parametrize(
    ("pattern", "caller", "matched"),
    [
        pytest.param(r"^\+1900", "+19005550100", True, id="anchored-prefix"),
        pytest.param(r"^\+1900", "+15551900000", False, id="anchor-respected"),
        pytest.param("900", "+15551900000", True, id="search-anywhere"),
        pytest.param("^$", None, True, id="missing-from-is-empty"),
        pytest.param(r"\+44", None, False, id="missing-from-never-matches-digits"),
    ],
)
def test_from_is_a_regex_searched_in_from(pattern: str, caller: str | None, matched: bool) -> None:
    """`from` uses re.search on the caller's number: unanchored unless the pattern anchors it."""
    tenant = _tenant(_route("callers", from_=pattern))
    params = {"From": caller} if caller is not None else {}
    assert (_name(tenant, "voice", **params) == "callers") is matched


@pytest.mark.parametrize(
    ("pattern", "text", "matched"),
    [
        pytest.param("menu", "can I see the menu please", True, id="search-anywhere"),
        pytest.param("^menu$", "the menu", False, id="anchored"),
        pytest.param("^menu$", "menu", True, id="anchored-exact"),
        pytest.param("menu", "MENU", False, id="case-sensitive"),
        pytest.param("(?i)menu", "MENU", True, id="inline-ignore-case"),
    ],
)
def test_body_is_a_regex_searched_in_the_sms_body(pattern: str, text: str, matched: bool) -> None:
    """`body` uses re.search on the message text, case-sensitive unless the pattern says (?i)."""
    tenant = _tenant(_route("keyword", "sms", body=pattern))
    assert (_name(tenant, "sms", Body=text) == "keyword") is matched


def test_all_conditions_of_a_match_must_hold() -> None:
    """to, from and body together: the route matches only when every one of them does."""
    tenant = _tenant(_route("strict", "sms", to={"+15550100001"}, from_=r"^\+44", body="(?i)stop"))
    assert _name(tenant, "sms", To="+15550100001", From="+447700900123", Body="STOP") == "strict"
    assert _name(tenant, "sms", To="+15550100002", From="+447700900123", Body="STOP") is None
    assert _name(tenant, "sms", To="+15550100001", From="+15550109999", Body="STOP") is None
    assert _name(tenant, "sms", To="+15550100001", From="+447700900123", Body="go") is None


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        pytest.param("voice", {"To": "+15550100002", "From": "+19005550100"}, "blocked", id="blocklist-first"),
        pytest.param("voice", {"To": "+15550100002", "From": "+15550109999"}, "closed-line", id="to"),
        pytest.param("voice", {"To": "+15550100001", "From": "+15550109999"}, "routes.2", id="catch-all-voice"),
        pytest.param("sms", {"To": "+15550100001", "Body": "Menu, please"}, "menu", id="body"),
        pytest.param("sms", {"To": "+15550100001", "Body": "hello"}, "other-sms", id="catch-all-sms"),
        pytest.param("status", {"To": "+15550100001"}, None, id="status"),
    ],
)
def test_routes_of_a_loaded_policy(kind: str, params: dict[str, str], expected: str | None) -> None:
    """The valid fixture's routes, loaded from YAML, pick the documented route per request."""
    tenant = load_file(VALID / "alpha.yaml", PUBLIC)
    assert _name(tenant, kind, **params) == expected
