"""The one outbound seam: every call out of the gateway goes through `Egress.request`.

One keep-alive `ClientSession` per app (opened and closed in app.py's cleanup_ctx), so calls to
a tenant's runtime, OpenAI or Twilio's REST API reuse connections; each call's timeout comes
from the request's Deadline; every client failure is mapped here, once, to UpstreamError (as
httpx maps its transport errors in one place), so actions handle one error type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from gateway.deadline import Deadline, DeadlineExceeded
from gateway.errors import UpstreamError
from gateway.hop import Answer, Hop, HopFailure, Target

# A TwiML answer or a chat completion is a few KB; a runtime answering megabytes is broken.
MAX_BODY = 1024 * 1024
LIMIT_PER_HOST = 100
DNS_TTL = 60


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def open_session(trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> aiohttp.ClientSession:
    """The app's one client session; aiohttp's TraceConfig is where client spans will hook in."""
    connector = aiohttp.TCPConnector(limit_per_host=LIMIT_PER_HOST, ttl_dns_cache=DNS_TTL)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=list(trace_configs) or None,
        # Timeouts come from each call's deadline; the session itself never gives up on its own.
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        raise_for_status=False,
    )


class Egress:
    """Calls out under a deadline; answers a Reply (any status) or raises UpstreamError."""

    def __init__(self, session: aiohttp.ClientSession, hop: Hop | None = None) -> None:
        self._session = session
        self._hop = hop if hop is not None else Hop()

    async def close(self) -> None:
        self._hop.close()
        await self._session.close()

    async def forward(
        self,
        target: Target,
        head: bytes,
        body: bytes,
        *,
        name: str,
        deadline: Deadline,
        cap: float | None = None,
        max_body: int = MAX_BODY,
    ) -> Answer:
        """One request (`head`: hop.request_head) to a route's runtime on the lean keep-alive
        client (hop.py), for the per-webhook hop where aiohttp's client costs too much; any
        status is answered, every failure raises UpstreamError (a connection that failed before
        anything was sent is tried once more, within the same timeout). name: as `request`'s
        target."""
        try:
            timeout = deadline.timeout(cap)
        except DeadlineExceeded as exc:
            raise UpstreamError(name, "deadline", detail=str(exc)) from None
        clock = deadline.clock
        started = clock()
        try:
            return await self._hop.exchange(target, head, body, timeout, max_body)
        except HopFailure as failure:
            # The connection failed before anything was sent: the one failure safe to try again,
            # within what is left of the one timeout (a connect that timed out leaves nothing).
            left = timeout - (clock() - started)
            if failure.reason != "connect" or left <= 0:
                raise UpstreamError(name, failure.reason, failure.status, failure.detail) from None
        try:
            return await self._hop.exchange(target, head, body, left, max_body)
        except HopFailure as failure:
            raise UpstreamError(name, failure.reason, failure.status, failure.detail) from None

    async def request(
        self,
        method: str,
        url: str,
        *,
        target: str,
        deadline: Deadline,
        cap: float | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        max_body: int = MAX_BODY,
    ) -> Reply:
        """One HTTP exchange with `url` (always from a policy, never from a request).

        target: a short name for logs and errors ("upstream acme/main", "openai").
        cap: the step's own timeout, if shorter than what the deadline leaves.
        """
        try:
            timeout = deadline.timeout(cap)
        except DeadlineExceeded as exc:
            raise UpstreamError(target, "deadline", detail=str(exc)) from None
        try:
            async with asyncio.timeout(timeout):
                # Never followed: the URL is the policy's, and a runtime must not send our
                # signature and tenant header anywhere else.
                async with self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as response:
                    length = response.content_length
                    if length is not None and length > max_body:
                        raise UpstreamError(target, "too_large", response.status, f"{length} bytes")
                    # read(n) returns what has arrived so far, not n bytes: gather to the end.
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > max_body:
                            raise UpstreamError(target, "too_large", response.status, f"over {max_body} bytes")
                        chunks.append(chunk)
                    data = b"".join(chunks)
                    return Reply(response.status, response.headers, data)
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamError(target, "timeout", detail=f"no answer within {timeout:.3f}s") from None
        except aiohttp.ClientConnectorError as exc:
            # Nothing was sent: the one failure a caller may retry without side effects.
            raise UpstreamError(target, "connect", detail=type(exc).__name__) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(target, "connection", detail=type(exc).__name__) from None
