"""The one place that turns an outcome or an error into an HTTP response."""

from __future__ import annotations

import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.errors import Refused
from gateway.limits.base import Decision
from gateway.limits.headers import rate_limit_headers

TWIML = "text/xml"


def twiml(body: bytes) -> web.Response:
    """TwiML is always 200: any 4xx/5xx makes Twilio log error 11200 and play its own message."""
    return web.Response(body=body, content_type=TWIML)


def no_content() -> web.Response:
    return web.Response(status=204)


def bad_request() -> web.Response:
    # Fixed text: the parser's message would quote the request's bytes. The rest of a refused
    # body is not worth reading: close (else aiohttp lingers reading it, holding a drain).
    response = web.Response(status=400, text="Bad Request: malformed body\n")
    response.force_close()
    return response


def request_timeout() -> web.Response:
    # RFC 9110 §15.5.9: a server sending 408 closes the connection.
    response = web.Response(status=408, text="Request Timeout: the body did not arrive in time\n")
    response.force_close()
    return response


def forbidden_signature() -> web.Response:
    # The reason stays in our log; the caller learns nothing about which check failed.
    return web.Response(status=403, text="Forbidden: invalid signature\n")


def unauthorized(why: str | None = None) -> web.Response:
    """401 with RFC 6750's challenge; `why` (a token was sent, and what is wrong with it, in
    our words) becomes error="invalid_token" and its error_description. §3.1: a request
    without credentials "SHOULD NOT" get an error code."""
    if why is None:
        challenge = {"WWW-Authenticate": 'Bearer realm="switchyard"'}
        return problem(401, "Unauthorized", "send Authorization: Bearer <token>", headers=challenge)
    challenge = {"WWW-Authenticate": f'Bearer realm="switchyard", error="invalid_token", error_description="{why}"'}
    return problem(401, "Invalid token", why, headers=challenge)


def insufficient_scope(scope: str) -> web.Response:
    """403: a valid token without the scope an endpoint needs (RFC 6750 §3.1)."""
    challenge = {"WWW-Authenticate": f'Bearer realm="switchyard", error="insufficient_scope", scope="{scope}"'}
    return problem(403, "Insufficient scope", f"this endpoint needs the scope {scope}", headers=challenge)


def too_many(error: Refused) -> web.Response:
    decision = error.decision
    body = {"error": "rate_limited", "limit": decision.rule.name, "retry_after": round(decision.retry_after, 3)}
    return json(body, status=429, headers=rate_limit_headers(decision))


def json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=CIMultiDict(headers or {})
    )


def with_limits(response: web.Response, decision: Decision | None) -> web.Response:
    if decision is not None:
        response.headers.update(rate_limit_headers(decision))
    return response


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: object
) -> web.Response:
    """RFC 9457 problem details (`extra`: extension members); the text is ours, never the request's."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/problem+json",
        headers=CIMultiDict(headers or {}),
    )


def body_too_large(limit: int) -> web.Response:
    """413 for an API body past `limit` bytes, with Connection: close: what is left of the body
    is never kept (aiohttp reads it only to drop it, for at most its lingering time)."""
    return _closing(problem(413, "Body too large", f"at most {limit} bytes"))


def body_timeout() -> web.Response:
    """408 for an API body that did not finish arriving in time (RFC 9110 §15.5.9: then close)."""
    return _closing(problem(408, "Request timeout", "the body did not arrive in time; send it again"))


def malformed_body() -> web.Response:
    """400 for an API body the HTTP parser refused (a broken chunk, an encoding that does not
    decode): nothing after it on the connection can be trusted, so it is closed."""
    return _closing(problem(400, "Malformed body", "the request body could not be read"))


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


def over_budget(tenant: str, retry_after: int) -> web.Response:
    """An API call past the tenant's daily budget: 429 until the UTC day turns."""
    return problem(
        429,
        "Daily budget exhausted",
        f"tenant {tenant} has spent its daily budget; it resets at 00:00 UTC",
        headers={"Retry-After": str(retry_after)},
    )
