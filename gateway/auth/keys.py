"""Public keys for API tokens, from PEM (a policy's) or a JSON Web Key Set (a tenant's JWKS URL),
each checked against the one algorithm it may verify: an RS256 key must be RSA, an ES256 key an
EC key on P-256, so a key can never be used with another algorithm than its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.policy.tenant import ApiKey

MIN_RSA_BITS = 2048  # NIST SP 800-131A: shorter RSA keys are not to be trusted for signatures
ASYMMETRIC = ("RS256", "ES256")


def _checked(algorithm: str, key: Any) -> Any:
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("an RS256 key must be an RSA public key")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS}")
        return key
    if algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("an ES256 key must be an EC public key on P-256")
        return key
    raise ValueError(f"{algorithm} takes no public key")


def public_key(algorithm: str, pem: bytes) -> Any:
    """The public key in `pem`, for `algorithm`; ValueError saying what is wrong."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    return _checked(algorithm, key)


def from_jwks(document: Mapping[str, Any]) -> dict[str, ApiKey]:
    """The usable keys of a JWKS document by kid: RS256 and ES256 signing keys with a kid (a
    key set may hold others: encryption keys, symmetric keys, keys without a kid, which no
    token could pick); ValueError if the document is not a key set."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise ValueError("not a JWK Set (no keys list)")
    usable: dict[str, ApiKey] = {}
    for entry in keys:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
            continue
        algorithm = entry.get("alg") or {"RSA": "RS256", "EC": "ES256"}.get(str(entry.get("kty")))
        if algorithm not in ASYMMETRIC:
            continue
        try:
            key = _checked(algorithm, jwt.PyJWK(entry, algorithm).key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
            continue
        usable[kid] = ApiKey(kid, algorithm, key)
    return usable
