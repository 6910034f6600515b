"""`Idempotency-Key` for API clients' POSTs: a retried request gets the first one's answer
instead of placing a second call.

The key is claimed with the first request (across instances with Redis) and its answer kept
for IDEMPOTENCY_TTL (a day). The same key again: the same request (by a digest of its method,
path and body) gets the stored answer with `Idempotent-Replayed: true`; another request gets
422; while the first is still running, 409. Answers that say "try again" (429, 503) are not
kept: the key is let go, so the retry runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import responses
from gateway.errors import BackendError
from gateway.limits.answers import AnswerStore
from gateway.limits.base import RetryKey

MAX_KEY = 255
KEPT_STATUSES = frozenset({200, 201, 400, 403, 413, 422, 502})  # final answers; a retry would get the same
HEADER = "Idempotency-Key"


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\x00" + path.encode() + b"\x00" + body).hexdigest()


def _encode(digest: str, response: web.Response) -> bytes:
    body = response.body if isinstance(response.body, bytes) else b""
    return f"{digest}\n{response.status}\n{response.content_type}\n".encode() + body


def _decode(answer: bytes) -> tuple[str, int, str, bytes]:
    digest, status, content_type, body = answer.split(b"\n", 3)
    return digest.decode(), int(status), content_type.decode(), body


async def once(
    store: AnswerStore,
    tenant: str,
    key: str,
    digest: str,
    run: Callable[[], Awaitable[web.Response]],
) -> web.Response:
    """`run()` once per key (and request): its answer, or the first one's again."""
    if not 0 < len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
        return responses.problem(400, "Bad Idempotency-Key", f"1 to {MAX_KEY} printable ASCII characters")
    retry = RetryKey("api\x00" + key, "")
    try:
        claim = await store.claim(tenant, retry, wait=0.0)
    except BackendError:
        return responses.problem(503, "Idempotency store unavailable", "try again", headers={"Retry-After": "1"})
    if not claim.first:
        if claim.answer is None:
            return responses.problem(409, "Request in progress", "a request with this Idempotency-Key is running")
        first, status, content_type, body = _decode(claim.answer)
        if first != digest:
            return responses.problem(422, "Idempotency-Key reused", "this key came with another request")
        return web.Response(
            body=body, status=status, content_type=content_type, headers={"Idempotent-Replayed": "true"}
        )
    response: web.Response | None = None
    try:
        response = await run()
    finally:
        try:
            if response is not None and response.status in KEPT_STATUSES:
                await store.settle(tenant, retry, _encode(digest, response))
            else:
                await store.forget(tenant, retry)
        except BackendError:
            pass  # the claim lapses at its TTL; a retry meanwhile gets 409
    return response
