"""Admission tokens: bound to tenant, call, route, nonce and hold; expiring; keyed by the tenant's tokens."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.auth import admission
from tests.support.fuzz import FUZZ, bounded, odd_text

KEY = b"acme-auth-token"
CALL = "CA" + "0" * 32
OTHER_CALL = "CA" + "1" * 32


def test_nonces_are_new_and_fit_the_token() -> None:
    """Each admission's nonce is its own, and one the token's shape accepts."""
    nonces = {admission.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    token = admission.issue(KEY, "acme", CALL, "agent", nonces.pop(), 0, 2000)
    assert admission.check([KEY], "acme", CALL, token, now=0) is not None


def test_a_token_proves_its_admission() -> None:
    """What was issued is what check returns, route names with dots and spaces included."""
    token = admission.issue(KEY, "acme", CALL, "routes.1 agent", "nonce_0001", 60_000, 2000)
    expected = admission.Admission("routes.1 agent", "nonce_0001", 60_000, 2000)
    assert admission.check([KEY], "acme", CALL, token, now=1990) == expected


def test_a_token_without_a_hold() -> None:
    """A tenant with no budget gets a token that holds nothing."""
    token = admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", 0, 2000)
    assert admission.check([KEY], "acme", CALL, token, now=0) == admission.Admission("agent", "nonce_0001", 0, 2000)


@pytest.mark.parametrize(
    ("keys", "tenant", "call", "now"),
    [
        pytest.param([b"another-token"], "acme", CALL, 1000, id="wrong key"),
        pytest.param([KEY], "bistro", CALL, 1000, id="another tenant"),
        pytest.param([KEY], "acme", OTHER_CALL, 1000, id="another call"),
        pytest.param([KEY], "acme", CALL, 2001, id="expired"),
    ],
)
def test_a_token_proves_nothing_else(keys: list[bytes], tenant: str, call: str, now: float) -> None:
    """Another key, tenant or call, or a token past its expiry, proves no admission."""
    token = admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", 500, 2000)
    assert admission.check(keys, tenant, call, token, now) is None


def test_the_previous_auth_token_still_checks() -> None:
    """During a token rotation a token made with either key checks."""
    token = admission.issue(b"old", "acme", CALL, "agent", admission.new_nonce(), 0, 2000)
    assert admission.check([b"new", b"old"], "acme", CALL, token, now=0) is not None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("v2.", "v1.", 1),
        lambda t: t + "x",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t.replace(".nonce_0001.", ".nonce_0002."),
        lambda t: t.replace(".2000.", ".9999."),
        lambda t: t.replace(".500.", ".5.", 1),  # a smaller hold: the rest would never be settled
        lambda t: "",
        lambda t: "v2." + "a" * 500,
        lambda t: "v2.!!!.nonce_0001.500.2000.mac",
        lambda t: t.replace(".500.", ".1" + "0" * 15 + "."),  # an oversized number
        lambda t: t.replace(".2000.", ".²000."),  # a Unicode digit: not a number, no crash
    ],
)
def test_a_changed_token_proves_nothing(mangle) -> None:  # type: ignore[no-untyped-def]
    """Any edit (version, nonce, hold, expiry, mac, shape, size) makes the token worthless."""
    token = admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", 500, 2000)
    assert admission.check([KEY], "acme", CALL, mangle(token), now=0) is None


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t[:-1] + "é", id="mac"),
        pytest.param(lambda t: t[:-2] + "\ud800x", id="mac with a lone surrogate"),
        pytest.param(lambda t: t.replace(".nonce_0001.", ".nonce_000é."), id="nonce"),
        pytest.param(lambda t: t.replace("v2.", "v2.é", 1), id="route"),
        pytest.param(lambda t: t.replace(".500.", ".5é0."), id="hold"),
        pytest.param(lambda t: "v2.é.é.é.é.é", id="every part"),
    ],
)
def test_a_non_ascii_token_proves_nothing_and_raises_nothing(mangle) -> None:  # type: ignore[no-untyped-def]
    """A non-ASCII character anywhere in a token (compare_digest raises on one) is no admission, not an error."""
    token = admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", 500, 2000)
    assert admission.check([KEY], "acme", CALL, mangle(token), now=0) is None


def test_nonces_and_holds_are_checked_on_issue() -> None:
    """A nonce that could break the token's shape, or a negative hold, is refused when issuing."""
    with pytest.raises(ValueError, match="nonce"):
        admission.issue(KEY, "acme", CALL, "agent", "nonce.0001", 0, 2000)
    with pytest.raises(ValueError, match="nonce"):
        admission.issue(KEY, "acme", CALL, "agent", "nonce_0001\n", 0, 2000)
    with pytest.raises(ValueError, match="hold"):
        admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", -1, 2000)


TOKEN = admission.issue(KEY, "acme", CALL, "agent", "nonce_0001", 500, 2000)


@st.composite
def edited_tokens(draw: st.DrawFn) -> str:
    """A real token with a stretch of it replaced by odd text: past the shape checks more often
    than text from nothing."""
    start = draw(st.integers(0, len(TOKEN)))
    end = draw(st.integers(start, len(TOKEN)))
    return TOKEN[:start] + draw(odd_text) + TOKEN[end:]


@FUZZ
@given(st.one_of(odd_text, edited_tokens()))
@example(TOKEN[:-1] + "é")  # the mac non-ASCII: hmac.compare_digest raised TypeError (issue 17)
@example(TOKEN[:-1] + "\udcff")  # a byte that was not UTF-8, as a lone surrogate
def test_any_text_is_an_admission_or_none(token: str) -> None:
    """check() on any text gives None or an Admission, never an exception."""
    with bounded():
        admitted = admission.check([KEY, b"old"], "acme", CALL, token, now=0)
    assert admitted is None or admitted == admission.Admission("agent", "nonce_0001", 500, 2000)
