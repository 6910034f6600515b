"""The switchyard DEMO runtime's app: a stand-in for each tenant's own runtime (its webhooks here,
its Media Streams echo agent in agent.py), plus the OpenAI stand-in of chat.py. Not for production.

`POST /<tenant>/voice` and `POST /<tenant>/sms` do what a tenant's runtime behind the gateway
does: check the X-Twilio-Signature the gateway signed anew for this URL, with twilio's own
RequestValidator and the tenant's auth token, then answer TwiML (built with twilio.twiml). A
forged or stale signature gets 403, and the gateway answers the route's fallback instead: the
demo shows both halves of an `upstream` route.

Each tenant's token comes from the environment variable its policy names
(`twilio.auth_token_env` in `<policies>/<tenant>.yaml`), read once at start: the same secret
the gateway signs with, and nothing of it in a file or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from gateway.demo import agent, chat
from gateway.demo.twilio_rest import TwilioApi

log = logging.getLogger("switchyard.demo")

BANNER = "switchyard DEMO runtime — not for production"
VALIDATORS = web.AppKey("demo_validators", dict[str, Any])  # tenant id → RequestValidator
SIGNATURE = "X-Twilio-Signature"
# What of a text the answer quotes back: enough to show the body arrived, one SMS segment in all.
QUOTE = 60
CALL_SECONDS = 5.0  # how long a call placed through the REST stand-in lasts, answered to completed


def tokens_from_policies(directory: Path, env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Each tenant's auth token, by the variable its policy file names; each account's token,
    by the SID the file names (for the Twilio REST stand-in); and a note for each tenant left
    out (unreadable file, no such variable set). The gateway's `check` judges the files: this
    only needs two keys of each."""
    found: dict[str, str] = {}
    accounts: dict[str, str] = {}
    notes: list[str] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            variable = data["twilio"]["auth_token_env"]
            account = str(data["twilio"].get("account_sid", ""))
        except (OSError, yaml.YAMLError, TypeError, KeyError, AttributeError) as error:
            notes.append(f"{path.name}: no twilio.auth_token_env read ({type(error).__name__}); tenant left out")
            continue
        token = env.get(str(variable), "")
        if not token:
            notes.append(f"{path.name}: {variable} is not set; tenant {path.stem!r} left out")
            continue
        found[path.stem] = token
        if account:
            accounts[account] = token
    return found, accounts, notes


def _name(tenant: str) -> str:
    """A tenant id as a caller would hear it: northwind → Northwind, acme-health → Acme Health."""
    return tenant.replace("-", " ").replace("_", " ").title()


def _own_url(request: web.Request, scheme: str = "http") -> str:
    """The URL this request reached, from the socket it came in on (never its Host header, which
    the sender chooses): what the gateway signed, as the policy's URL names this runtime."""
    assert request.transport is not None
    host, port = request.transport.get_extra_info("sockname")[:2]
    return f"{scheme}://{host}:{port}{request.path_qs}"


async def _signature_valid(request: web.Request, validator: Any) -> bool:
    url = _own_url(request)
    signature = request.headers.get(SIGNATURE, "")
    if request.content_type == "application/json":
        # Twilio's JSON scheme: the body's SHA-256 in the query, the URL alone signed.
        if "bodySHA256" not in request.query:
            return False
        body = await request.read()
        return bool(validator.validate(url, body.decode("utf-8", "replace"), signature))
    form = await request.post()
    # Every value of a repeated name counts: twilio's validator reads them with getall().
    params = MultiDict((name, str(value)) for name, value in form.items())
    return bool(validator.validate(url, params, signature))


def voice_twiml(tenant: str) -> str:
    answer = VoiceResponse()
    name = _name(tenant)
    answer.say(f"{name}'s runtime here, the switchyard demo runtime. Your call reached it signed by the gateway.")
    return str(answer)


def sms_twiml(tenant: str, body: str) -> str:
    words = " ".join(body.split())
    quoted = words if len(words) <= QUOTE else words[: QUOTE - 1].rstrip() + "…"
    answer = MessagingResponse()
    answer.message(f'{_name(tenant)}\'s runtime (switchyard demo) got your text: "{quoted}"')
    return str(answer)


async def tenant_runtime(request: web.Request) -> web.Response:
    """`POST /<tenant>/voice|sms`: TwiML for a valid signature, 403 otherwise."""
    tenant, kind = request.match_info["tenant"], request.match_info["kind"]
    validator = request.app[VALIDATORS].get(tenant)
    if validator is None:
        # The path is the sender's: not logged, only answered.
        return web.Response(status=404, text="No such tenant in the switchyard demo runtime.\n")
    if not await _signature_valid(request, validator):
        log.info("%s/%s: X-Twilio-Signature not valid for this URL: 403 (the gateway answers a fallback)", tenant, kind)
        return web.Response(status=403, text="Invalid X-Twilio-Signature.\n")
    if kind == "voice":
        twiml = voice_twiml(tenant)
    else:
        form = await request.post() if request.content_type != "application/json" else {}
        twiml = sms_twiml(tenant, str(form.get("Body", "")))
    log.info("%s/%s: signature valid: answered TwiML", tenant, kind)
    return web.Response(text=twiml, content_type="text/xml")


async def tenant_status(request: web.Request) -> web.Response:
    """`POST /<tenant>/status`: the tenant's own status callback, where the gateway forwards
    what Twilio reports about calls and texts its outbound API placed: 204 for a valid
    signature (the status logged, the number not), 403 otherwise."""
    tenant = request.match_info["tenant"]
    validator = request.app[VALIDATORS].get(tenant)
    if validator is None:
        return web.Response(status=404, text="No such tenant in the switchyard demo runtime.\n")
    if not await _signature_valid(request, validator):
        log.info("%s/status: X-Twilio-Signature not valid for this URL: 403", tenant)
        return web.Response(status=403, text="Invalid X-Twilio-Signature.\n")
    form = await request.post()
    sid = str(form.get("CallSid") or form.get("MessageSid") or "")
    status = str(form.get("CallStatus") or form.get("MessageStatus") or "")
    duration = f" after {str(form['CallDuration'])[:6]} s" if "CallDuration" in form else ""
    log.info("%s/status: %s…%s %s%s (signature valid)", tenant, sid[:2], sid[-4:], status[:20], duration)
    return web.Response(status=204)


async def tenant_stream(request: web.Request) -> web.StreamResponse:
    """`GET /<tenant>/stream`: the tenant's DEMO echo agent (agent.py) behind a valid signature
    over this ws:// URL, 403 otherwise, 404 for a tenant not known here."""
    tenant = request.match_info["tenant"]
    validator = request.app[VALIDATORS].get(tenant)
    if validator is None:
        return web.Response(status=404, text="No such tenant in the switchyard demo runtime.\n")
    return await agent.serve_stream(request, tenant, validator, _own_url(request, "ws"))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "demo": True})


def create_app(
    tokens: Mapping[str, str],
    api_key: str,
    accounts: Mapping[str, str] | None = None,
    call_seconds: float = CALL_SECONDS,
) -> web.Application:
    """The demo runtime: a runtime for each tenant in `tokens` (tenant id → auth token), the
    chat completions stand-in that accepts `api_key` ("" accepts no key), and Twilio's REST API
    for `accounts` (SID → auth token), whose calls last `call_seconds`."""
    app = web.Application()
    app[VALIDATORS] = {tenant: RequestValidator(token) for tenant, token in tokens.items()}
    app[chat.API_KEY] = api_key
    app.router.add_post("/v1/chat/completions", chat.handle)
    TwilioApi(dict(accounts or {}), call_seconds=call_seconds, record=False).install(app)
    app.router.add_post("/{tenant}/{kind:voice|sms}", tenant_runtime)
    app.router.add_post("/{tenant}/status", tenant_status)
    app.router.add_get("/{tenant}/stream", tenant_stream)
    app.router.add_get("/healthz", healthz)
    return app
