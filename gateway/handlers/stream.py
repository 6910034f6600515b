"""GET /t/{tenant}/stream: Twilio's Media Streams WebSocket, verified before it is upgraded.

The upgrade must carry a valid X-Twilio-Signature over the wss:// URL Twilio called (the public
URL's rules, https turned into wss); anything else is refused with 403 before any WebSocket
exists. Then the stream's life (its admission, the runtime, the relay) is bridge/lifecycle.py's.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway import responses
from gateway.auth.twilio_signature import SIGNATURE, SIGNATURE_SETTINGS, algorithm_from_settings, verify_form
from gateway.bridge.handshake import accept, is_upgrade
from gateway.bridge.lifecycle import CLOSE_WITHIN, bridge
from gateway.exchange import Exchange
from gateway.keys import EXCHANGE, SERVICES
from gateway.protocol.media import MAX_MESSAGE

log = logging.getLogger(__name__)


async def stream(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    exchange = Exchange("stream", services.registry.current, services.clock)
    exchange.recorder = services.recorder
    request[EXCHANGE] = exchange
    tenant = exchange.policies.tenants.get(request.match_info["tenant"])
    if tenant is None:
        exchange.decision = "unknown-tenant"
        return web.Response(status=404, text="Not Found\n")
    exchange.tenant = tenant
    headers = request.headers
    url = services.public_url.rebuild(
        scheme=request.scheme,
        host=request.host,
        path_qs=request.raw_path,
        peer=request.remote,
        forwarded_proto=headers.get("X-Forwarded-Proto"),
        forwarded_host=headers.get("X-Forwarded-Host"),
        websocket=True,
    )
    algorithm = algorithm_from_settings(headers.get(SIGNATURE_SETTINGS))
    if url is None or not verify_form(url, {}, headers.get(SIGNATURE, ""), tenant.keys, algorithm):
        exchange.decision = "forged"
        log.warning("invalid Twilio signature for tenant %s on a stream upgrade", tenant.id)
        return responses.forbidden_signature()
    exchange.verified = True
    # No extension is taken (Twilio asks for none; audio would not shrink under deflate).
    if not is_upgrade(request):
        exchange.decision = "malformed"
        return web.Response(status=426, text="Upgrade Required: a WebSocket\n", headers={"Upgrade": "websocket"})
    response, twilio = await accept(request, MAX_MESSAGE)
    try:
        await bridge(twilio, exchange, tenant, services)
    except Exception:
        # After the 101 aiohttp can send no error reply, and would drop the request's record:
        # the stream ends here (1011), logged, and its access line and span still come.
        log.exception("tenant %s: a stream failed", tenant.id)
        exchange.decision = "error"
        await twilio.close(1011, CLOSE_WITHIN)
    finally:
        if not twilio.done:
            await twilio.close(1000, CLOSE_WITHIN)
    return response
