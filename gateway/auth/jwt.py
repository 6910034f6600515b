"""Bearer tokens for API clients: HS256 pinned, exp/aud/iss checked, and a tenant claim.

The token's unverified `tenant` claim only picks whose secret to verify with; nothing from
it is trusted until the signature with that tenant's secret is checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import jwt

from gateway.errors import SignatureError
from gateway.policy.tenant import Tenant

ALGORITHMS = ["HS256"]  # pinned: "none" and algorithm-confusion tokens never verify
LEEWAY_SECONDS = 5


def bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SignatureError("missing bearer token")
    return token.strip()


def tenant_of(token: str, tenants: Mapping[str, Tenant]) -> Tenant:
    """The tenant a valid token speaks for; SignatureError for anything else."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise SignatureError(f"malformed token: {exc}") from None
    tenant_id = unverified.get("tenant")
    tenant = tenants.get(tenant_id) if isinstance(tenant_id, str) else None
    if tenant is None or tenant.api is None:
        raise SignatureError("token names no tenant with API access")
    try:
        claims = jwt.decode(
            token,
            tenant.api.secret,
            algorithms=ALGORITHMS,
            audience=tenant.api.audience,
            issuer=tenant.api.issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "aud", "tenant"]},
        )
    except jwt.PyJWTError as exc:
        raise SignatureError(f"invalid token: {exc}") from None
    if claims.get("tenant") != tenant.id:
        raise SignatureError("tenant claim changed during verification")
    return tenant
