"""`switchyard explain`: what the gateway would do with one webhook, without calling anything.

Which route matches, which action, its deadline, the buckets it charges and the budget, and for
an action that calls out the exact request it would send (the signature masked). Read from the
policies as `serve` loads them; the only I/O is an optional read of the shared ledger's spend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from gateway.actions.base import Incoming
from gateway.clock import monotonic
from gateway.deadline import ANSWER_MARGIN
from gateway.exchange import Exchange
from gateway.limits.budget import Spend
from gateway.policy.registry import PolicySet
from gateway.policy.tenant import Tenant
from gateway.telemetry.cost import to_usd

SECRET_HEADERS = frozenset({"x-twilio-signature", "authorization"})


def explain(
    tenant: Tenant, kind: str, params: Mapping[str, str], url: str, spend: Spend | None = None
) -> dict[str, Any]:
    """The report for one webhook of `kind` with `params`, as Twilio would send it to `url`."""
    form = {name: [value] for name, value in params.items()}
    report: dict[str, Any] = {"tenant": tenant.id, "kind": kind}
    rules = tenant.rules.get(kind, ())  # type: ignore[call-overload]
    report["buckets"] = [{"name": r.name, "rate": r.rate, "per_seconds": r.per, "burst": r.burst} for r in rules]
    report["budget"] = _budget(tenant, spend)
    route = tenant.route(kind, form) if kind in ("voice", "sms") else None
    if route is None:
        report["route"] = None
        report["answer"] = tenant.fallback[kind].decode() if kind in ("voice", "sms") else "204 No Content"  # type: ignore[index]
        return report
    report["route"] = route.name
    report["action"] = route.action
    if route.reply is not None:
        report["answer"] = route.reply.decode()
        return report
    call = route.call
    timeout = getattr(call, "timeout", tenant.webhook_timeout)
    report["deadline_ms"] = round(min(timeout, tenant.webhook_timeout - ANSWER_MARGIN) * 1000)
    report["fallback"] = route.fallback.decode()
    describe = getattr(call, "request", None)
    if describe is not None:
        body = urlencode(list(params.items())).encode()
        incoming = Incoming(kind, url, form, body, "application/x-www-form-urlencoded", {})
        exchange = Exchange(kind, PolicySet.of({tenant.id: tenant}), monotonic)
        target, headers = describe(exchange, incoming, b"\x01" * 8)
        report["request"] = {
            "method": "POST",
            "url": target,
            "headers": {name: _masked(name, value) for name, value in headers.items()},
            "body": body.decode(),
        }
    return report


def _masked(name: str, value: str) -> str:
    if name.lower() in SECRET_HEADERS:
        return value[:4] + "…" if value else value
    return value


def _budget(tenant: Tenant, spend: Spend | None) -> dict[str, Any] | None:
    if tenant.daily_budget is None:
        return None
    budget: dict[str, Any] = {"daily_usd": to_usd(tenant.daily_budget), "call_reserve_usd": to_usd(tenant.call_reserve)}
    if spend is None:
        budget["today"] = "not read (give --limiter to read the shared ledger)"
    else:
        left = tenant.daily_budget - spend.total - spend.reserved
        budget.update(
            spent_usd=to_usd(spend.total), reserved_usd=to_usd(spend.reserved), remaining_usd=to_usd(max(0, left))
        )
    return budget
