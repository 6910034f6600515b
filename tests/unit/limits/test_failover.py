"""FailoverLimiter: the primary's answer when it has one, the tenant's fallback mode when it fails."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.errors import BackendError
from gateway.limits.base import Decision, Limiter, RetryKey, Rule
from gateway.limits.budget import BudgetCharge
from gateway.limits.failover import CLOSED_RETRY_AFTER, FailoverLimiter, local_rule
from gateway.limits.memory import MemoryBuckets
from tests.support.clock import FakeClock

WEBHOOKS = Rule("webhooks", rate=50, per=1.0, burst=100)
LLM = Rule("llm", rate=30, per=60.0, burst=10)


class FlakyLimiter:
    """A primary that fails while `down` is set, else admits with remaining 42."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0
        self.closed = False

    async def acquire(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        *,
        budget: BudgetCharge | None = None,
    ) -> Decision:
        self.calls += 1
        if self.down:
            raise BackendError("redis", "acquire", ConnectionError("refused"))
        return Decision(True, 42, 0.0, 0.5, rules[0])

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def primary() -> FlakyLimiter:
    """A primary the test can take down and bring back."""
    return FlakyLimiter()


def test_local_rule_is_this_instances_share() -> None:
    """Rate and burst are divided by the live instances; burst stays at least 1."""
    assert local_rule(WEBHOOKS, 4) == Rule("webhooks", 12.5, 1.0, 25)
    assert local_rule(LLM, 30) == Rule("llm", 1.0, 60.0, 1)
    assert local_rule(LLM, 0) == LLM


async def test_healthy_primary_answers(primary: FlakyLimiter, clock: FakeClock) -> None:
    """While the primary answers, its Decision is returned as is."""
    failover = FailoverLimiter(primary, MemoryBuckets(clock))
    decision = await failover.acquire("acme", [WEBHOOKS])
    assert decision.remaining == 42 and not failover.degraded


async def test_local_mode_charges_this_instances_share(primary: FlakyLimiter, clock: FakeClock) -> None:
    """Mode local: with 4 live instances, a burst of 100 becomes 25 here."""
    primary.down = True
    failover = FailoverLimiter(primary, MemoryBuckets(clock), instances=lambda: 4)
    decisions = [await failover.acquire("acme", [WEBHOOKS], mode="local") for _ in range(26)]
    assert sum(d.allowed for d in decisions) == 25
    assert decisions[0].rule.name == "webhooks" and decisions[0].remaining == 24
    clock.advance(1.0)
    assert (await failover.acquire("acme", [WEBHOOKS], mode="local")).allowed


async def test_local_mode_keeps_dedup(primary: FlakyLimiter, clock: FakeClock) -> None:
    """Mode local honours retry tokens too: a retry is not charged twice, another request is."""
    primary.down = True
    failover = FailoverLimiter(primary, MemoryBuckets(clock))
    first = await failover.acquire("acme", [LLM], retry=RetryKey("tok", "sig-1"), mode="local")
    again = await failover.acquire("acme", [LLM], retry=RetryKey("tok", "sig-1"), mode="local")
    other = await failover.acquire("acme", [LLM], retry=RetryKey("tok", "sig-2"), mode="local")
    assert first.remaining == again.remaining == 9
    assert (again.retry, other.retry, other.remaining) == ("replay", "mismatch", 8)


async def test_failover_is_a_limiter(primary: FlakyLimiter, clock: FakeClock) -> None:
    """FailoverLimiter satisfies the Limiter protocol (mypy checks the assignment); sync only in process."""
    local = MemoryBuckets(clock)
    shared: Limiter = FailoverLimiter(primary, local)
    in_process: Limiter = FailoverLimiter(MemoryBuckets(clock), local)
    retry = RetryKey("tok", "sig-1")
    assert shared.acquire_now("acme", [LLM], 1, retry) is None
    assert (await shared.acquire("acme", [LLM], 1, retry, mode="closed")).remaining == 42
    decision = in_process.acquire_now("acme", [LLM], 1, retry)
    assert decision is not None and decision.remaining == 9
    assert not shared.degraded


async def test_open_mode_admits(primary: FlakyLimiter, clock: FakeClock) -> None:
    """Mode open admits, reporting the tightest rule as full."""
    primary.down = True
    failover = FailoverLimiter(primary, MemoryBuckets(clock))
    decision = await failover.acquire("acme", [WEBHOOKS, LLM], mode="open")
    assert decision == Decision(True, 10, 0.0, 0.0, LLM)


async def test_closed_mode_refuses_briefly(primary: FlakyLimiter, clock: FakeClock) -> None:
    """Mode closed refuses, asking the client to retry soon."""
    primary.down = True
    failover = FailoverLimiter(primary, MemoryBuckets(clock))
    decision = await failover.acquire("acme", [WEBHOOKS, LLM], mode="closed")
    assert (decision.allowed, decision.remaining, decision.rule) == (False, 0, LLM)
    assert decision.retry_after == CLOSED_RETRY_AFTER


async def test_degraded_follows_the_primary(primary: FlakyLimiter, clock: FakeClock) -> None:
    """degraded is set by a failure and cleared by the primary's next answer, reported once each."""
    failover = FailoverLimiter(primary, MemoryBuckets(clock))
    seen: list[tuple[bool, BackendError | None]] = []
    failover.on_transition(lambda degraded, error: seen.append((degraded, error)))
    primary.down = True
    await failover.acquire("acme", [WEBHOOKS])
    await failover.acquire("acme", [WEBHOOKS])
    assert failover.degraded
    primary.down = False
    await failover.acquire("acme", [WEBHOOKS])
    assert not failover.degraded
    assert [degraded for degraded, _ in seen] == [True, False]
    assert isinstance(seen[0][1], BackendError) and seen[1][1] is None


async def test_other_errors_are_not_swallowed(clock: FakeClock) -> None:
    """Only BackendError means 'store down'; a bug in the primary still surfaces."""

    class Broken(FlakyLimiter):
        async def acquire(
            self,
            tenant: str,
            rules: Sequence[Rule],
            cost: int = 1,
            retry: RetryKey | None = None,
            *,
            budget: BudgetCharge | None = None,
        ) -> Decision:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        await FailoverLimiter(Broken(), MemoryBuckets(clock)).acquire("acme", [WEBHOOKS])


async def test_close_closes_both(primary: FlakyLimiter, clock: FakeClock) -> None:
    """close() closes the primary and the local store."""
    await FailoverLimiter(primary, MemoryBuckets(clock)).close()
    assert primary.closed
