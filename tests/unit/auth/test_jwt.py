"""API tokens: each key's algorithm pinned (no `none`, no HS/RS confusion), `kid` picks the key
(static keys and a JWKS, refreshed on rotation), exp/nbf/aud/iss checked, the tenant claim picks
and must match the key, and scopes. Tokens are made with PyJWT; the JWKS comes through the
cache's fetch seam, its clock a fake one (nothing sleeps)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.auth.jwks import MIN_REFETCH, JwksCache, JwksUnavailable
from gateway.auth.jwt import Grant, bearer, verify
from gateway.auth.keys import from_jwks, public_key
from gateway.errors import ScopeError, SignatureError, UpstreamError
from gateway.policy.tenant import ApiAuth, ApiKey, Tenant
from tests.support.clock import FakeClock
from tests.support.fuzz import FUZZ, bounded, odd_text

SECRET = b"n" * 40
OTHER = b"o" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_NEXT = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
JWKS_URL = "https://idp.example/.well-known/jwks.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _tenant(tenant_id: str, *keys: ApiKey, issuer: str | None = None, **api: Any) -> Tenant:
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
        api=ApiAuth(keys, "switchyard", issuer, **api),
    )


TENANTS = {
    "northwind": _tenant("northwind", ApiKey(None, "HS256", SECRET)),
    "other": _tenant("other", ApiKey(None, "HS256", OTHER), issuer="idp"),
    "acme": _tenant(
        "acme",
        ApiKey("hs", "HS256", SECRET),
        ApiKey("rsa", "RS256", public_key("RS256", _pem(RSA_KEY))),
        ApiKey("ec", "ES256", public_key("ES256", _pem(EC_KEY))),
        jwks_url=JWKS_URL,
    ),
    "strict": _tenant("strict", ApiKey(None, "HS256", SECRET), require_scopes=True),
}


def _token(key: Any = SECRET, algorithm: str = "HS256", kid: str | None = None, **claims: object) -> str:
    body: dict[str, object] = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 60}
    body.update(claims)
    headers = {"kid": kid} if kid is not None else None
    return pyjwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm, headers=headers)


class Jwks:
    """The tenant's identity provider, as the cache's fetch seam: a JWK Set it can rotate."""

    def __init__(self, *keys: tuple[str, Any]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    def document(self) -> bytes:
        entries = []
        for kid, private in self.keys:
            jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            entries.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return json.dumps({"keys": entries}).encode()

    async def fetch(self, url: str) -> bytes:
        assert url == JWKS_URL
        self.fetches += 1
        if self.down:
            raise UpstreamError("jwks", "connect")
        return self.document()


async def _verify(token: str, jwks: JwksCache | None = None) -> Grant:
    return await verify(token, TENANTS, jwks)


async def test_valid_token_names_its_tenant() -> None:
    """A token signed with the tenant's secret, right audience, not expired, is accepted."""
    assert (await _verify(_token())).tenant.id == "northwind"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: _token(key=OTHER), "bad signature"),
        (lambda: _token(exp=int(time.time()) - 60), "token expired"),
        (lambda: _token(nbf=int(time.time()) + 60), "token not valid yet"),
        (lambda: _token(aud="someone-else"), "wrong audience"),
        (lambda: _token(exp=None), "missing claim exp"),
        (lambda: _token(tenant="nobody"), "token names no tenant with API access"),
        (lambda: _token(key=OTHER, tenant="other", iss="someone"), "wrong issuer"),
        (lambda: _token(key=OTHER, tenant="other"), "missing claim iss"),
        (lambda: "not.a.jwt", "malformed token"),
    ],
    ids=["wrong-key", "expired", "not-yet", "audience", "no-exp", "unknown-tenant", "issuer", "no-iss", "garbage"],
)
async def test_bad_tokens_are_refused_with_their_reason(make: Callable[[], str], why: str) -> None:
    """Each check fails with a short reason of ours (what the 401's error_description says).
    Tokens are made when the test runs: their times are relative to now."""
    with pytest.raises(SignatureError) as refused:
        await _verify(make())
    assert refused.value.reason == why


async def test_a_token_claiming_another_tenant_does_not_verify_with_its_own_key() -> None:
    """The claim picks the keys: northwind's key over a token claiming `other` fails."""
    with pytest.raises(SignatureError):
        await _verify(_token(key=SECRET, tenant="other", iss="idp"))


async def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) never verifies, whatever it claims."""
    claims = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 60}
    unsigned = pyjwt.encode(claims, None, "none")  # type: ignore[arg-type]  # no key: alg none
    with pytest.raises(SignatureError) as refused:
        await _verify(unsigned)
    assert refused.value.reason == "the key takes HS256 only"


async def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    """HS/RS confusion: a token HS256-signed with the tenant's RSA public PEM as the secret,
    naming the RSA key, is refused: that key takes RS256 only."""
    # PyJWT itself refuses a PEM as an HMAC secret: signed by hand, as an attacker would.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
    payload = _b64(json.dumps({"tenant": "acme", "aud": "switchyard", "exp": int(time.time()) + 60}).encode())
    mac = hmac.new(_pem(RSA_KEY), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{_b64(mac)}"
    with pytest.raises(SignatureError) as refused:
        await _verify(forged)
    assert refused.value.reason == "the key takes RS256 only"


@pytest.mark.parametrize(
    ("key", "algorithm", "kid"),
    [(SECRET, "HS256", "hs"), (RSA_KEY, "RS256", "rsa"), (EC_KEY, "ES256", "ec")],
    ids=["hs256", "rs256", "es256"],
)
async def test_kid_picks_the_key_and_its_algorithm(key: Any, algorithm: str, kid: str) -> None:
    """A tenant with several keys: each verifies the tokens that name it, under its algorithm."""
    grant = await _verify(_token(key=key, algorithm=algorithm, kid=kid, tenant="acme"))
    assert grant.tenant.id == "acme"


@pytest.mark.parametrize(
    ("kid", "why"),
    [(None, "token names no key (kid)"), ("rsa", "bad signature")],
    ids=["no-kid", "wrong-kid"],
)
async def test_a_token_must_name_the_key_that_signed_it(kid: str | None, why: str) -> None:
    """With several keys a token must say which (kid); naming another key of the same
    algorithm fails its signature."""
    with pytest.raises(SignatureError) as refused:
        await _verify(_token(key=RSA_NEXT, algorithm="RS256", kid=kid, tenant="acme"))
    assert refused.value.reason == why


async def test_jwks_keys_verify_and_a_rotation_is_fetched() -> None:
    """A kid not among the static keys is looked up in the tenant's JWKS; a new kid (rotated in)
    makes the set be fetched again, but not more often than MIN_REFETCH."""
    clock = FakeClock()
    idp = Jwks(("k1", RSA_KEY))
    cache = JwksCache(idp.fetch, clock)
    assert (await _verify(_token(key=RSA_KEY, algorithm="RS256", kid="k1", tenant="acme"), cache)).tenant.id == "acme"
    idp.keys.append(("k2", RSA_NEXT))
    rotated = _token(key=RSA_NEXT, algorithm="RS256", kid="k2", tenant="acme")
    with pytest.raises(SignatureError, match="unknown key"):
        await _verify(rotated, cache)  # too soon to fetch again
    assert idp.fetches == 1
    clock.advance(MIN_REFETCH)
    assert (await _verify(rotated, cache)).tenant.id == "acme"
    assert idp.fetches == 2
    await _verify(rotated, cache)
    assert idp.fetches == 2  # kept


async def test_a_jwks_that_fails_keeps_the_keys_it_had() -> None:
    """The identity provider down: the last keys stay in use; with none ever fetched, the
    cache says it has no set (a 503, not the token's fault)."""
    clock = FakeClock()
    idp = Jwks(("k1", RSA_KEY))
    cache = JwksCache(idp.fetch, clock)
    token = _token(key=RSA_KEY, algorithm="RS256", kid="k1", tenant="acme")
    await _verify(token, cache)
    idp.down = True
    clock.advance(3600)
    assert (await _verify(token, cache)).tenant.id == "acme"
    with pytest.raises(JwksUnavailable):
        await _verify(token, JwksCache(idp.fetch, clock))


def test_from_jwks_keeps_only_signing_keys_it_can_pin() -> None:
    """Symmetric keys, encryption keys, keys without a kid and short RSA keys are left out."""
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key refused
    good = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    weak = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(short.public_key()))
    document = {
        "keys": [
            {**good, "kid": "ok"},
            {**good, "kid": "enc", "use": "enc"},
            {**good},
            {**weak, "kid": "short"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        ]
    }
    assert sorted(from_jwks(document)) == ["ok"]


@pytest.mark.parametrize(
    ("claims", "scope", "allowed"),
    [
        ({"scope": "calls:write cost:read"}, "cost:read", True),
        ({"scp": ["calls:write"]}, "cost:read", False),
        ({"scope": "calls:write"}, None, True),
        ({}, "cost:read", True),
    ],
    ids=["has-it", "lacks-it", "endpoint-needs-none", "no-scope-claim"],
)
async def test_scopes_are_held_to_what_the_token_states(claims: dict[str, object], scope: str, allowed: bool) -> None:
    """A token with a scope claim may use only what it lists; one without may use all, unless
    its tenant requires scopes."""
    grant = await _verify(_token(**claims))  # type: ignore[arg-type]  # claims only, no key or kid
    if allowed:
        grant.require(scope)
    else:
        with pytest.raises(ScopeError):
            grant.require(scope)


async def test_a_tenant_that_requires_scopes_refuses_a_token_without_any() -> None:
    """require_scopes: a token with no scope claim is held to none."""
    grant = await _verify(_token(tenant="strict"))
    with pytest.raises(ScopeError):
        grant.require("cost:read")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_bearer_requires_the_scheme_and_a_token(header: str | None) -> None:
    """Anything but `Bearer <token>` is a missing token."""
    with pytest.raises(SignatureError):
        bearer(header)


@pytest.mark.parametrize(
    ("algorithm", "pem"),
    [("RS256", _pem(EC_KEY)), ("ES256", _pem(RSA_KEY)), ("RS256", b"not a pem")],
    ids=["rs256-given-ec", "es256-given-rsa", "garbage"],
)
def test_a_public_key_must_fit_its_algorithm(algorithm: str, pem: bytes) -> None:
    """A key is loaded only for the one algorithm it can verify."""
    with pytest.raises(ValueError, match="key"):
        public_key(algorithm, pem)


_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_json = _scalar | st.lists(_scalar, max_size=3) | st.dictionaries(st.text(max_size=6), _scalar, max_size=3)


@st.composite
def edited_tokens(draw: st.DrawFn) -> str:
    """A valid token with a stretch of it replaced by odd text."""
    token = _token()
    start = draw(st.integers(0, len(token)))
    end = draw(st.integers(start, len(token)))
    return token[:start] + draw(odd_text) + token[end:]


@FUZZ
@given(st.one_of(odd_text, edited_tokens()))
@example("\udcff")  # a header byte that was not UTF-8: PyJWT's encode() raised UnicodeEncodeError
@example(_b64(b'{"alg":"HS256"}') + ".\udcff.x")
async def test_any_text_is_refused_with_a_signature_error(token: str) -> None:
    """verify() on any text gives a Grant (an edit that left the token valid) or raises SignatureError, nothing else."""
    try:
        with bounded():
            grant = await _verify(token)
    except SignatureError:
        return
    assert grant.tenant.id == "northwind"


def _signed(header: dict[str, object], claims: dict[str, object]) -> str:
    """A token with this header and these claims, signed with northwind's secret whatever they say."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


_headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "none", "RS256"]) | _json},
    optional={"kid": st.sampled_from(["hs", "rsa"]) | _json, "typ": _json, "crit": _json},
)
_claims = st.fixed_dictionaries(
    {"tenant": st.sampled_from(["northwind", "acme", "strict"]) | _json},
    optional={k: _json for k in ("exp", "nbf", "iat", "aud", "iss", "scope", "scp")},
)


@FUZZ
@given(_headers, _claims)
async def test_any_signed_header_and_claims_verify_or_are_refused(
    header: dict[str, object], claims: dict[str, object]
) -> None:
    """Signed with the right key but holding any header and claims, a token gives a Grant or a SignatureError."""
    try:
        with bounded():
            grant = await _verify(_signed(header, claims))
    except SignatureError:
        return
    assert grant.tenant.id == claims["tenant"]


@FUZZ
@given(st.one_of(st.none(), odd_text, odd_text.map(lambda token: "Bearer " + token)))
@example("Bearer \udcff")  # then .encode() in the admin endpoint raised UnicodeEncodeError
def test_bearer_gives_an_ascii_token_or_a_signature_error(header: str | None) -> None:
    """bearer() on any Authorization header gives a token that encodes as ASCII, or raises SignatureError."""
    try:
        with bounded():
            token = bearer(header)
    except SignatureError:
        return
    assert token and token.encode("ascii")
