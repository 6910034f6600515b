"""Bearer tokens for API clients (RFC 7519 JWTs): each tenant's keys with their algorithms
pinned, `kid` picking the key, exp/nbf/aud/iss checked with a small leeway, a `tenant` claim,
and scopes.

The token's unverified `tenant` claim only picks whose keys to verify with, and its unverified
header's `kid` which of them; nothing from either is trusted until the signature is checked
with that key, under that key's one algorithm (so neither `alg: none` nor a token signed
HS256 with a tenant's RSA public key as the secret ever verifies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jwt

from gateway.auth.jwks import JwksCache
from gateway.errors import ScopeError, SignatureError
from gateway.policy.tenant import ApiAuth, ApiKey, Tenant

LEEWAY_SECONDS = 5  # clock skew allowed on exp, nbf and iat
SCOPES = ("calls:write", "messages:write", "cost:read")


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: its tenant, and its scopes (None: the token has no scope
    claim, and its tenant's policy does not require one)."""

    tenant: Tenant
    scopes: frozenset[str] | None

    def require(self, scope: str | None) -> None:
        """ScopeError unless the token may use an endpoint that needs `scope`."""
        if scope is not None and self.scopes is not None and scope not in self.scopes:
            raise ScopeError(scope)


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer` header; SignatureError for anything else.

    A bearer token is ASCII (RFC 6750 §2.1, b64token): aiohttp keeps a header's bytes that are
    not UTF-8 as lone surrogates, which would make any encode() of the token raise."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise SignatureError("missing bearer token")
    if not token.isascii():
        raise SignatureError("malformed token")
    return token


async def verify(token: str, tenants: Mapping[str, Tenant], jwks: JwksCache | None) -> Grant:
    """The grant of a valid token; SignatureError (why, in a few words) for anything else;
    JwksUnavailable when the tenant's key set could never be fetched."""
    # A JWT is base64url and dots; PyJWT encodes the text first, raising UnicodeEncodeError
    # (no PyJWTError) on a lone surrogate.
    if not token.isascii():
        raise SignatureError("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise SignatureError("malformed token") from None
    tenant_id = unverified.get("tenant")
    tenant = tenants.get(tenant_id) if isinstance(tenant_id, str) else None
    if tenant is None or tenant.api is None:
        raise SignatureError("token names no tenant with API access")
    api = tenant.api
    key = await _key(api, header.get("kid"), jwks)
    if header.get("alg") != key.algorithm:
        raise SignatureError(f"the key takes {key.algorithm} only")
    required = ["exp", "aud", "tenant", *(["iss"] if api.issuer is not None else [])]
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=api.audience,
            issuer=api.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": required},
        )
    except jwt.ExpiredSignatureError:
        raise SignatureError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise SignatureError("token not valid yet") from None
    except jwt.InvalidAudienceError:
        raise SignatureError("wrong audience") from None
    except jwt.InvalidIssuerError:
        raise SignatureError("wrong issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise SignatureError(f"missing claim {exc.claim}") from None
    except jwt.PyJWTError:
        raise SignatureError("bad signature") from None
    if claims.get("tenant") != tenant.id:
        raise SignatureError("tenant claim changed during verification")
    scopes = _scopes(claims)
    if scopes is None and api.require_scopes:
        scopes = frozenset()  # held to what it states: nothing
    return Grant(tenant, scopes)


async def _key(api: ApiAuth, kid: object, jwks: JwksCache | None) -> ApiKey:
    if kid is not None and not isinstance(kid, str):
        raise SignatureError("malformed token")
    if kid is None:
        # No kid: only a tenant with exactly one key (and no key set) can be meant.
        if len(api.keys) == 1 and api.jwks_url is None:
            return api.keys[0]
        raise SignatureError("token names no key (kid)")
    for key in api.keys:
        if key.kid == kid:
            return key
    if api.jwks_url is not None and jwks is not None:
        # JwksUnavailable goes up: not the token's fault (503, not 401).
        found = await jwks.key(api.jwks_url, kid, api.jwks_refresh)
        if found is not None:
            return found
    raise SignatureError("unknown key (kid)")


def _scopes(claims: Mapping[str, object]) -> frozenset[str] | None:
    """RFC 8693 `scope` (space-separated), or `scp` (a list, as some providers issue)."""
    scope = claims.get("scope", claims.get("scp"))
    if scope is None:
        return None
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        return frozenset(scope)
    raise SignatureError("malformed scope claim")


def mint(tenant: Tenant, scopes: tuple[str, ...], ttl: float, now: float) -> str:
    """A token the tenant's API would accept, signed with its HS256 secret: for trying the API
    by hand and for load tests (`switchyard token`). ValueError when the tenant has no API or
    only public keys (its tokens then come from its own identity provider)."""
    api = tenant.api
    if api is None:
        raise ValueError(f"tenant {tenant.id} has no api: block in its policy")
    key = next((k for k in api.keys if k.algorithm == "HS256"), None)
    if key is None:
        raise ValueError(f"tenant {tenant.id} has no HS256 key: its tokens come from its identity provider")
    claims: dict[str, object] = {"tenant": tenant.id, "aud": api.audience, "iat": int(now), "exp": int(now + ttl)}
    if api.issuer is not None:
        claims["iss"] = api.issuer
    if scopes:
        claims["scope"] = " ".join(scopes)
    headers = {"kid": key.kid} if key.kid is not None else None
    return jwt.encode(claims, key.key, algorithm="HS256", headers=headers)
