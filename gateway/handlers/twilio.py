"""Twilio webhooks: tenant → signature → limits → route, in that order, in one handler.

DESIGN.md draws these steps as four aiohttp middlewares. They run here as plain calls in one
coroutine instead: each middleware layer costs a wrapper call and a coroutine frame on every
request of every route, while these steps only ever apply to the Twilio routes. The order is
the design's, and it matters: a forged request is refused before it can spend any quota.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

import orjson
from aiohttp import web

from gateway import responses
from gateway.auth.twilio_signature import algorithm_from_settings, verify_form, verify_json
from gateway.handlers.forms import parse_form
from gateway.keys import LOG, SERVICES
from gateway.logfields import LogFields
from gateway.policy.registry import PolicySet
from gateway.policy.tenant import Tenant
from gateway.routing import router, twiml
from gateway.services import Services

WebhookKind = Literal["voice", "sms", "status"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SIGNATURE = "X-Twilio-Signature"
SIGNATURE_SETTINGS = "X-Twilio-Webhooks-Signature-Settings"
IDEMPOTENCY = "I-Twilio-Idempotency-Token"
OUTBOUND = frozenset({"outbound-api", "outbound-dial"})

log = logging.getLogger("switchyard.twilio")


def webhook(kind: WebhookKind) -> Handler:
    """The handler for one webhook kind; Twilio never gets a 5xx from it."""

    async def handle(request: web.Request) -> web.StreamResponse:
        fields = LogFields(kind=kind)
        request[LOG] = fields
        services = request.app[SERVICES]
        try:
            # One coroutine for the whole pipeline: each extra frame per request is measurable.
            body = await request.read()
            headers = request.headers
            is_json = headers.get("Content-Type", "").startswith("application/json")
            params = _json_params(body) if is_json else parse_form(body)
            fields.caller, fields.called = _first(params, "From"), _first(params, "To")
            fields.sid = _first(params, "CallSid") or _first(params, "MessageSid")

            tenant = _find_tenant(services.registry.current, request.match_info.get("tenant"), params)
            if tenant is None:
                fields.decision = "unknown-tenant"
                return _unknown(kind)
            fields.tenant = tenant.id

            public = services.public_url
            if public.base is not None:
                url = public.base + request.raw_path  # the common case needs no peer or host lookup
            else:
                url = public.rebuild(
                    scheme=request.scheme,
                    host=request.host,
                    path_qs=request.raw_path,
                    peer=request.remote,
                    forwarded_proto=headers.get("X-Forwarded-Proto"),
                    forwarded_host=headers.get("X-Forwarded-Host"),
                )
            signature = headers.get(SIGNATURE, "")
            algorithm = algorithm_from_settings(headers.get(SIGNATURE_SETTINGS))
            if is_json:
                valid = verify_json(url, body, signature, tenant.keys, algorithm)
            else:
                valid = verify_form(url, params, signature, tenant.keys, algorithm)
            if not valid:
                fields.decision = "forged"
                log.warning("invalid Twilio signature for tenant %s on %s", tenant.id, request.path)
                return responses.forbidden_signature()

            if kind == "status":
                fields.decision = "recorded"
                return responses.no_content()

            rules = tenant.rules[kind]
            if rules:
                limits = services.limits
                retry_token = headers.get(IDEMPOTENCY)
                decision = limits.acquire_now(tenant.id, rules, 1, retry_token) or await limits.acquire(
                    tenant.id, rules, 1, retry_token, mode=tenant.on_store_failure
                )
                if not decision.allowed:
                    fields.decision = "refused"
                    fields.route = f"limit:{decision.rule.name}"
                    return responses.twiml(tenant.refusal[kind])

            chosen = router.route(tenant, kind, params)
            if chosen is None:
                fields.decision = "no-route"
                return responses.twiml(tenant.fallback[kind])
            fields.route = chosen.name
            fields.decision = "answered"
            return responses.twiml(chosen.reply)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("webhook failed; answering the fallback TwiML")
            fields.decision = "error"
            return _fallback(services, fields.tenant, kind)

    return handle


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


def _json_params(body: bytes) -> dict[str, list[str]]:
    """Top-level scalar fields of a JSON webhook, for tenant lookup and routing only."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: [v if isinstance(v, str) else str(v)] for k, v in data.items() if isinstance(v, str | int | float)}


def _find_tenant(policies: PolicySet, path_tenant: str | None, params: Mapping[str, list[str]]) -> Tenant | None:
    """From the path; else our own number (To inbound, From on calls we placed); else the account."""
    if path_tenant is not None:
        return policies.tenants.get(path_tenant)
    ours = "From" if _first(params, "Direction") in OUTBOUND else "To"
    tenant = policies.by_number.get(_first(params, ours))
    if tenant is None:
        tenant = policies.by_account.get(_first(params, "AccountSid"))
    return tenant


def _unknown(kind: WebhookKind) -> web.Response:
    if kind == "voice":
        return responses.twiml(twiml.NOT_CONFIGURED)
    if kind == "sms":
        return responses.twiml(twiml.EMPTY)
    return responses.no_content()


def _fallback(services: Services, tenant_id: str | None, kind: WebhookKind) -> web.Response:
    if kind == "status":
        return responses.no_content()
    tenant = services.registry.current.tenants.get(tenant_id) if tenant_id else None
    if tenant is not None:
        return responses.twiml(tenant.fallback[kind])
    return responses.twiml(twiml.VOICE_FALLBACK if kind == "voice" else twiml.EMPTY)
