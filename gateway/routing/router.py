"""Matches a webhook to the first route of its tenant's policy that fits."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.policy.tenant import CompiledRoute, Tenant


def route(tenant: Tenant, kind: str, params: Mapping[str, list[str]]) -> CompiledRoute | None:
    """The first route for `kind` whose match fits the request, or None (the tenant's fallback)."""
    for candidate in tenant.routes:
        if candidate.kind == kind and candidate.matches(params):
            return candidate
    return None
