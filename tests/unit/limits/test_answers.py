"""The answers kept per retry token, in process: one claim, waiters get the first answer."""

from __future__ import annotations

import asyncio

from gateway.limits.answers import Claim, MemoryAnswers, usable
from gateway.limits.base import MAX_RETRY_TOKEN, RetryKey
from tests.support.clock import FakeClock

RETRY = RetryKey("tok", "sig")


async def test_the_first_claims_and_a_waiter_gets_its_answer(clock: FakeClock) -> None:
    """The second claim of a token waits while the first runs, and gets the answer it settles."""
    answers = MemoryAnswers(clock)
    assert (await answers.claim("acme", RETRY, wait=5)).first
    waiter = asyncio.create_task(answers.claim("acme", RETRY, wait=5))
    await asyncio.sleep(0)  # let it start waiting: a scheduling step, no time passes
    assert not waiter.done()
    await answers.settle("acme", RETRY, b"<Response/>")
    claim = await waiter
    assert (claim.first, claim.answer) == (False, b"<Response/>")
    later = await answers.claim("acme", RETRY, wait=5)
    assert (later.first, later.answer) == (False, b"<Response/>")


async def test_tokens_are_per_tenant_and_binding_and_expire(clock: FakeClock) -> None:
    """Another tenant or another signature claims anew; after the TTL the token claims anew."""
    answers = MemoryAnswers(clock, ttl=60)
    assert (await answers.claim("acme", RETRY, wait=0)).first
    assert (await answers.claim("other", RETRY, wait=0)).first
    assert (await answers.claim("acme", RetryKey("tok", "other-sig"), wait=0)).first
    clock.advance(61)
    assert (await answers.claim("acme", RETRY, wait=0)).first


async def test_a_waiter_gives_up_at_its_wait(clock: FakeClock) -> None:
    """No answer within `wait`: the claim says so (answer None) rather than hang."""
    answers = MemoryAnswers(clock)
    await answers.claim("acme", RETRY, wait=5)
    claim = await answers.claim("acme", RETRY, wait=0)
    assert (claim.first, claim.answer) == (False, None)


def test_only_bounded_tokens_are_kept() -> None:
    """An empty or over-long token is not a retry key (the header is not signed)."""
    assert usable(RETRY)
    assert not usable(None)
    assert not usable(RetryKey("x" * (MAX_RETRY_TOKEN + 1), "sig"))


async def test_a_failed_first_request_answers_its_retries_none(clock: FakeClock) -> None:
    """settle(None): a waiter and a later retry both learn there is no answer (no second call)."""
    answers = MemoryAnswers(clock)
    await answers.claim("acme", RETRY, wait=5)
    waiter = asyncio.create_task(answers.claim("acme", RETRY, wait=5))
    await asyncio.sleep(0)
    await answers.settle("acme", RETRY, None)
    assert (await waiter) == Claim(first=False, answer=None)
    assert (await answers.claim("acme", RETRY, wait=5)) == Claim(first=False, answer=None)


async def test_the_oldest_tokens_go_past_the_limit(clock: FakeClock) -> None:
    """At most `limit` tokens are kept: the oldest is forgotten first, and claims anew."""
    answers = MemoryAnswers(clock, limit=2)
    for token in ("a", "b", "c"):
        assert (await answers.claim("acme", RetryKey(token, "sig"), wait=0)).first
        await answers.settle("acme", RetryKey(token, "sig"), token.encode())
    assert (await answers.claim("acme", RetryKey("c", "sig"), wait=0)).answer == b"c"
    assert (await answers.claim("acme", RetryKey("a", "sig"), wait=0)).first
    assert len(answers) <= 3


async def test_a_settle_after_expiry_keeps_nothing(clock: FakeClock) -> None:
    """A request that outlived the TTL leaves no answer behind: the store stays bounded."""
    answers = MemoryAnswers(clock, ttl=60)
    await answers.claim("acme", RETRY, wait=0)
    clock.advance(61)
    assert (await answers.claim("other", RETRY, wait=0)).first  # prunes the expired claim
    await answers.settle("acme", RETRY, b"<Response/>")
    assert len(answers) == 1


async def test_a_forgotten_token_claims_anew(clock: FakeClock) -> None:
    """forget() drops a claim in flight (its waiters get None) or a settled answer: the next
    claim of the token is first again."""
    answers = MemoryAnswers(clock)
    assert (await answers.claim("acme", RETRY, wait=0)).first
    waiter = asyncio.create_task(answers.claim("acme", RETRY, wait=5))
    await asyncio.sleep(0)  # a scheduling step: the waiter is waiting
    await answers.forget("acme", RETRY)
    assert (await waiter).answer is None
    assert (await answers.claim("acme", RETRY, wait=0)).first
    await answers.settle("acme", RETRY, b"kept")
    await answers.forget("acme", RETRY)
    assert (await answers.claim("acme", RETRY, wait=0)).first
