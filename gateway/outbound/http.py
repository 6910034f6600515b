"""twilio-python's HTTP client, on the app's one outbound seam.

twilio-python lets a Client be given any `http_client` (its documented extension point); this
one sends each request through `Egress.request` (the app's one pooled aiohttp session, closed
at shutdown, its failures mapped once to UpstreamError) instead of a session of its own, under
a timeout. `base` replaces Twilio's API origin (`https://api.twilio.com`) for a stand-in or a
proxy: SWITCHYARD_TWILIO_API_BASE, never a URL from a request.
"""

from __future__ import annotations

import base64
import logging
from urllib.parse import urlencode, urlsplit

from twilio.http import AsyncHttpClient
from twilio.http.response import Response

from gateway.clock import Clock
from gateway.deadline import Deadline
from gateway.egress import Egress

log = logging.getLogger(__name__)

TWILIO_API = "https://api.twilio.com"
REST_WITHIN = 10.0  # s for one REST request (Twilio answers a create in well under a second)
MAX_ANSWER = 256 * 1024


class SeamHttpClient(AsyncHttpClient):  # type: ignore[misc]  # twilio-python is untyped
    def __init__(self, egress: Egress, clock: Clock, base: str | None = None, timeout: float = REST_WITHIN) -> None:
        super().__init__(log, True, timeout)
        self._egress = egress
        self._clock = clock
        self._base = base.rstrip("/") if base else None
        self._timeout = timeout

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - twilio-python's HttpClient interface
        allow_redirects: bool = False,
    ) -> Response:
        if self._base is not None:
            parts = urlsplit(url)
            url = self._base + parts.path + (f"?{parts.query}" if parts.query else "")
        if params:
            url += ("&" if "?" in url else "?") + urlencode(_pairs(params))
        sent = dict(headers or {})
        body = None
        if data is not None:
            body = urlencode(_pairs(data)).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if auth is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        reply = await self._egress.request(
            method.upper(),
            url,
            target="twilio",
            deadline=Deadline.after(timeout or self._timeout, self._clock),
            headers=sent,
            body=body,
            max_body=MAX_ANSWER,
        )
        return Response(reply.status, reply.body.decode("utf-8", "replace"), reply.headers)


def _pairs(values: dict[str, object]) -> list[tuple[str, str]]:
    """Form pairs as twilio-python means them: a list value is the parameter repeated."""
    pairs: list[tuple[str, str]] = []
    for name, value in values.items():
        for one in value if isinstance(value, list) else [value]:
            pairs.append((name, str(one)))
    return pairs
