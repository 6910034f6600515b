"""API tokens: HS256 only, exp/aud/iss checked, the tenant claim picks and must match the key."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from gateway.auth.jwt import bearer, tenant_of
from gateway.errors import SignatureError
from gateway.policy.tenant import ApiAuth, Tenant

SECRET = b"n" * 40
OTHER = b"o" * 40


def _tenant(tenant_id: str, secret: bytes, issuer: str | None = None) -> Tenant:
    return Tenant(
        id=tenant_id,
        file=f"{tenant_id}.yaml",
        account_sid="AC" + "0" * 32,
        keys=(b"k",),
        numbers=frozenset(),
        rules={"voice": (), "sms": (), "status": (), "api": ()},
        routes=(),
        fallback={"voice": b"", "sms": b""},
        refusal={"voice": b"", "sms": b""},
        api=ApiAuth(secret, "switchyard", issuer),
    )


TENANTS = {
    "northwind": _tenant("northwind", SECRET),
    "other": _tenant("other", OTHER, issuer="idp"),
}


def _token(key: bytes = SECRET, algorithm: str = "HS256", **claims: object) -> str:
    body: dict[str, object] = {
        "tenant": "northwind",
        "aud": "switchyard",
        "exp": int(time.time()) + 60,
    }
    body.update(claims)
    return pyjwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def test_valid_token_names_its_tenant() -> None:
    """A token signed with the tenant's secret, right audience, not expired, is accepted."""
    assert tenant_of(_token(), TENANTS).id == "northwind"


@pytest.mark.parametrize(
    "token",
    [
        _token(key=OTHER),
        _token(exp=int(time.time()) - 60),
        _token(aud="someone-else"),
        _token(exp=None),
        _token(tenant="nobody"),
        _token(key=OTHER, tenant="other"),
        _token(key=b"x" * 48, algorithm="HS384"),
        pyjwt.encode(
            {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 60},
            key=None,
            algorithm="none",
        ),
        "not.a.token",
    ],
    ids=[
        "wrong-key",
        "expired",
        "wrong-aud",
        "no-exp",
        "unknown-tenant",
        "missing-issuer",
        "hs384",
        "alg-none",
        "garbage",
    ],
)
def test_bad_tokens_are_refused(token: str) -> None:
    """Each way a token can be wrong is a SignatureError, never a tenant."""
    with pytest.raises(SignatureError):
        tenant_of(token, TENANTS)


def test_bearer_header_parsing() -> None:
    """Only 'Bearer <token>' carries a token."""
    assert bearer("Bearer abc") == "abc"
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(SignatureError):
            bearer(header)
