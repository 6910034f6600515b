"""Answers of calls out, kept per Twilio retry token: a retry never starts a second call.

Twilio retries a webhook it got no answer to (a timeout, a dropped connection) with the same
`I-Twilio-Idempotency-Token`. For an action that calls out (the tenant's runtime, a model
paid per token), a second call is a second charge and maybe a second side effect. The first
request claims the token; a retry that comes while it runs waits for its answer; one that comes
after gets the stored answer, for as long as the token is remembered. Across instances with
Redis (the claim is SET NX; a waiter on another instance polls for the answer).

A token is bound to the signature of the request it came with (limits/base.RetryKey): the same
token on another request is not a retry and claims nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from gateway.clock import Clock, monotonic
from gateway.limits.base import MAX_RETRY_TOKEN, RetryKey
from gateway.limits.redis_client import RedisClient, gate_of, guard

# How long an answer is kept: Twilio's retries of one webhook all come within its total time.
ANSWER_TTL = 60.0
# At most this many tokens are remembered in one process (~100 MB of answers at worst): past
# it the oldest are forgotten early, and a retry of one of those would call out again.
MAX_KEPT = 200_000
# How often a waiter on another instance looks for the answer (Redis).
POLL_INTERVAL = 0.05
PENDING = b"\x00pending"


@dataclass(frozen=True, slots=True)
class Claim:
    """first: this request runs the call and must `settle` it. Otherwise `answer` is the first
    request's answer (None: it did not come in time, or the first request failed to settle)."""

    first: bool
    answer: bytes | None = None


class AnswerStore(Protocol):
    async def claim(self, tenant: str, retry: RetryKey, wait: float) -> Claim:
        """Claim the token, or wait up to `wait` seconds for the first request's answer."""
        ...

    async def settle(self, tenant: str, retry: RetryKey, answer: bytes | None) -> None:
        """The first request's answer (None: it had none; waiters then get None at once)."""
        ...

    async def forget(self, tenant: str, retry: RetryKey) -> None:
        """Drop the token's claim or answer: the next request with it runs again."""
        ...

    async def close(self) -> None: ...


def usable(retry: RetryKey | None) -> bool:
    return retry is not None and 0 < len(retry.token) <= MAX_RETRY_TOKEN


class MemoryAnswers:
    """Answers of one process: a retry of a request in flight awaits its future; a settled
    answer is kept as plain bytes under a str key, its expiry in a queue.

    Why this shape: kept as futures in tuples for the whole TTL, a minute of answers at a few
    thousand requests a second (every forwarded webhook has a token) made each full garbage
    collection walk them all: the upstream bench slowed round after round (p99 66 → 446 ms over
    48 s). Bytes, str keys and (float, str) tuples are objects the collector stops tracking."""

    def __init__(self, clock: Clock = monotonic, ttl: float = ANSWER_TTL, limit: int = MAX_KEPT) -> None:
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        self._pending: dict[str, asyncio.Future[bytes | None]] = {}
        self._answers: dict[str, bytes | None] = {}
        self._expiry: deque[tuple[float, str]] = deque()  # claim order is expiry order (one ttl)

    def _prune(self, now: float) -> None:
        expiry = self._expiry
        while expiry and (expiry[0][0] <= now or len(expiry) > self._limit):
            _, key = expiry.popleft()
            self._answers.pop(key, None)
            self._pending.pop(key, None)

    async def claim(self, tenant: str, retry: RetryKey, wait: float) -> Claim:
        now = self._clock()
        self._prune(now)
        key = f"{tenant}\x00{retry.token}\x00{retry.binding}"
        if key in self._answers:
            return Claim(first=False, answer=self._answers[key])
        future = self._pending.get(key)
        if future is None:
            self._pending[key] = asyncio.get_running_loop().create_future()
            self._expiry.append((now + self._ttl, key))
            return Claim(first=True)
        try:
            async with asyncio.timeout(wait):
                return Claim(first=False, answer=await asyncio.shield(future))
        except TimeoutError:
            return Claim(first=False)

    async def settle(self, tenant: str, retry: RetryKey, answer: bytes | None) -> None:
        key = f"{tenant}\x00{retry.token}\x00{retry.binding}"
        future = self._pending.pop(key, None)
        if future is None:
            return  # expired (or pushed out by the limit) while it ran: nothing to keep it for
        self._answers[key] = answer
        if not future.done():
            future.set_result(answer)

    async def forget(self, tenant: str, retry: RetryKey) -> None:
        key = f"{tenant}\x00{retry.token}\x00{retry.binding}"
        self._answers.pop(key, None)
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def __len__(self) -> int:
        """Tokens remembered (in flight or answered)."""
        return len(self._pending) + len(self._answers)

    async def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._pending.clear()
        self._answers.clear()
        self._expiry.clear()


def answer_key(tenant: str, retry: RetryKey) -> str:
    # The token and binding are the request's (bounded, but hashed: no raw request text in keys).
    digest = hashlib.sha256(f"{retry.token}\x00{retry.binding}".encode()).hexdigest()[:32]
    return f"sy:{{{tenant}}}:ans:{digest}"


class RedisAnswers:
    """Answers shared by every instance: SET NX claims, the answer replaces the claim."""

    def __init__(self, client: RedisClient, *, ttl: float = ANSWER_TTL, deadline: float = 0.050) -> None:
        self._client = client
        self._gate = gate_of(client)
        self._ttl = ttl
        self._deadline = deadline

    async def claim(self, tenant: str, retry: RetryKey, wait: float) -> Claim:
        key = answer_key(tenant, retry)
        async with guard("answer claim", self._deadline, self._gate):
            claimed = await self._client.set(key, PENDING, nx=True, px=int(self._ttl * 1000))
        if claimed:
            return Claim(first=True)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while True:
            async with guard("answer read", self._deadline, self._gate):
                value = await self._client.get(key)
            if value is None:
                return Claim(first=False)  # expired, or the first request could not settle
            if value != PENDING:
                data = value.encode() if isinstance(value, str) else value
                return Claim(first=False, answer=data or None)
            if loop.time() + POLL_INTERVAL >= until:
                return Claim(first=False)
            await asyncio.sleep(POLL_INTERVAL)

    async def settle(self, tenant: str, retry: RetryKey, answer: bytes | None) -> None:
        async with guard("answer store", self._deadline, self._gate):
            await self._client.set(answer_key(tenant, retry), answer or b"", px=int(self._ttl * 1000))

    async def forget(self, tenant: str, retry: RetryKey) -> None:
        async with guard("answer forget", self._deadline, self._gate):
            await self._client.delete(answer_key(tenant, retry))

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""
