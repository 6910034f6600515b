"""A Tenant built in code, for tests of what reads one (metrics, gauges, auth): no policy file,
nothing configured but what a test passes."""

from __future__ import annotations

from typing import Any

from gateway.policy.tenant import Tenant


def bare_tenant(tenant_id: str, **fields: Any) -> Tenant:
    """Tenant `tenant_id` with no numbers, rules or routes, one signing key; `fields` override."""
    values: dict[str, Any] = {
        "id": tenant_id,
        "file": f"{tenant_id}.yaml",
        "account_sid": "AC" + "0" * 32,
        "keys": (b"token",),
        "numbers": frozenset(),
        "rules": {},
        "routes": (),
        "fallback": {},
        "refusal": {},
    }
    return Tenant(**{**values, **fields})
