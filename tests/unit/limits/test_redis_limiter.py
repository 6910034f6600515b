"""RedisBuckets against a fake client: batching, deadline, breaker, NOSCRIPT, keys; no network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.errors import BackendError
from gateway.limits.base import MAX_RETRY_TOKEN, Decision, RetryKey, Rule
from gateway.limits.breaker import CircuitBreaker, State
from gateway.limits.budget import BudgetCharge, Hold, expire_at
from gateway.limits.leases import lease_key
from gateway.limits.redis import RedisBuckets, bucket_key, dedup_key
from gateway.limits.redis_client import CircuitOpen
from tests.support.clock import FakeClock

WEBHOOKS = Rule("webhooks", rate=5, per=1.0, burst=10)
LLM = Rule("llm", rate=3, per=7.0, burst=2)
# What the script answers: allowed, 1-based rule index, remaining, retry_after, reset, retry.
ALLOWED = [1, 1, 9, b"0", b"0.2", 0, 0, 0]


class FakeScript:
    def __init__(self, text: str) -> None:
        self.script = text
        self.sha = "sha-1"


class FakePipeline:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert not raise_on_error
        return await self.client.run(self.commands)


class FakeClient:
    """Answers every EVALSHA with `reply`, or fails, hangs, or has lost its scripts."""

    def __init__(self) -> None:
        self.reply: Any = ALLOWED
        self.error: Exception | None = None
        self.hang = False
        self.has_script = True
        self.sent: list[list[tuple[Any, ...]]] = []
        self.loads = 0

    def register_script(self, text: str) -> FakeScript:
        return FakeScript(text)

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert not transaction
        return FakePipeline(self)

    async def script_load(self, text: str) -> str:
        self.loads += 1
        self.has_script = True
        return "sha-2"

    async def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.sent.append(commands)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        if not self.has_script:
            return [NoScriptError("NOSCRIPT No matching script.") for _ in commands]
        return [self.reply for _ in commands]


@pytest.fixture
def client() -> FakeClient:
    """A fake Redis client that answers at once."""
    return FakeClient()


@pytest.fixture
def breaker_clock() -> FakeClock:
    """The breaker's clock, apart from the script's."""
    return FakeClock()


@pytest.fixture
def limiter(client: FakeClient, clock: FakeClock, breaker_clock: FakeClock) -> RedisBuckets:
    """A limiter over the fake client, with fake clocks for the script and the breaker."""
    breaker = CircuitBreaker(breaker_clock, failures=3, cooldown=1.0)
    return RedisBuckets(client, clock=clock, deadline=0.05, breaker=breaker)  # type: ignore[arg-type]


async def test_one_evalsha_per_acquire_with_keys_and_exact_args(limiter: RedisBuckets, client: FakeClient) -> None:
    """Each acquire is one EVALSHA: bucket keys, dedup key, now, cost, dedup TTL, binding, the
    number of buckets, rule doubles."""
    client.reply = [1, 2, 1, b"0", b"4.666666666666667", 0, 0, 0]
    decision = await limiter.acquire("acme", [WEBHOOKS, LLM], cost=2, retry=RetryKey("tok", "sig"))
    assert decision == Decision(True, 1, 0.0, 4.666666666666667, LLM)
    ((command,),) = client.sent
    assert command == (
        "EVALSHA", "sha-1", 3,
        "sy:{acme}:b:webhooks", "sy:{acme}:b:llm", "sy:{acme}:d:tok",
        "1000.0", 2, 60_000, "sig", 2,
        "0.2", 10, "2.3333333333333335", 2,
    )  # fmt: skip


async def test_a_budget_rides_in_the_same_evalsha(limiter: RedisBuckets, client: FakeClient) -> None:
    """A budgeted acquire is still one EVALSHA: the day's three ledger keys after the buckets',
    then cap, expiry, the hold and the cost's parts; the reply's last two elements are the
    budget's outcome and the day's total."""
    client.reply = [1, 1, 9, b"0", b"0.2", 0, 1, 57_000]
    budget = BudgetCharge("2024-05-01", 100_000, {"webhook": 100, "sms": 7_900}, Hold("call:CA1", 42_500, 14_700.0))
    decision = await limiter.acquire("acme", [WEBHOOKS], budget=budget)
    assert (decision.allowed, decision.budget, decision.spent) == (True, "charged", 57_000)
    ((command,),) = client.sent
    assert command == (
        "EVALSHA", "sha-1", 4,
        "sy:{acme}:b:webhooks", "sy:{acme}:$:2024-05-01", "sy:{acme}:$h:2024-05-01", "sy:{acme}:$ha:2024-05-01",
        "1000.0", 1, 0, "", 1,
        "0.2", 10,
        100_000, expire_at("2024-05-01"), "call:CA1", 42_500, "14700.0", 0,
        "webhook", 100, "sms", 7_900,
    )  # fmt: skip
    client.reply = [1, 1, 9, b"0", b"0.2", 0, 2, 99_000]
    assert (await limiter.acquire("acme", [WEBHOOKS], budget=budget)).budget == "over"
    # Spend booked here during an outage rides along, counted, before the cost's parts.
    replayed = BudgetCharge("2024-05-01", None, {"webhook": 100}, None, {"webhook": 3_000})
    await limiter.acquire("acme", [WEBHOOKS], budget=replayed)
    assert client.sent[-1][0][-10:] == ("", expire_at("2024-05-01"), "", 0, "0", 1, "webhook", 3_000, "webhook", 100)


async def test_without_retry_no_dedup_key_is_sent(limiter: RedisBuckets, client: FakeClient) -> None:
    """No retry token, or one over MAX_RETRY_TOKEN: no dedup key, TTL 0, empty binding."""
    await limiter.acquire("acme", [WEBHOOKS])
    await limiter.acquire("acme", [WEBHOOKS], retry=RetryKey("t" * (MAX_RETRY_TOKEN + 1), "sig"))
    commands = [command for batch in client.sent for command in batch]
    assert [command[2:9] for command in commands] == [(1, "sy:{acme}:b:webhooks", "1000.0", 1, 0, "", 1)] * 2


@pytest.mark.parametrize(("code", "outcome"), [(0, "new"), (1, "replay"), (2, "mismatch")])
async def test_retry_outcome_is_read_from_the_reply(
    limiter: RedisBuckets, client: FakeClient, code: int, outcome: str
) -> None:
    """The script's sixth reply element becomes Decision.retry."""
    client.reply = [1, 1, 9, b"0", b"0.2", code, 0, 0]
    decision = await limiter.acquire("acme", [WEBHOOKS], retry=RetryKey("tok", "sig"))
    assert decision.retry == outcome


async def test_without_clock_the_script_reads_redis_time(client: FakeClient) -> None:
    """With no clock injected, `now` is sent empty: the script reads Redis TIME."""
    limiter = RedisBuckets(client, deadline=0.05)  # type: ignore[arg-type]
    await limiter.acquire("acme", [WEBHOOKS])
    assert client.sent[0][0][4] == ""


async def test_concurrent_acquires_share_one_pipeline(limiter: RedisBuckets, client: FakeClient) -> None:
    """Acquires arriving together go out as one pipeline, one EVALSHA each."""
    await asyncio.gather(*(limiter.acquire(f"t{i}", [WEBHOOKS]) for i in range(50)))
    assert [len(batch) for batch in client.sent] == [50]
    assert limiter.round_trips == 1


async def test_driver_error_is_one_backend_error_for_the_batch(limiter: RedisBuckets, client: FakeClient) -> None:
    """A failed round trip raises one BackendError, carrying the cause, to every waiter."""
    client.error = RedisConnectionError("connection refused")
    results = await asyncio.gather(*(limiter.acquire("acme", [WEBHOOKS]) for _ in range(3)), return_exceptions=True)
    assert isinstance(results[0], BackendError)
    assert all(result is results[0] for result in results)
    assert (results[0].backend, results[0].operation) == ("redis", "acquire")
    assert isinstance(results[0].cause, RedisConnectionError)


async def test_slow_redis_fails_at_the_deadline(limiter: RedisBuckets, client: FakeClient) -> None:
    """A round trip that does not come back within the deadline is a BackendError."""
    client.hang = True
    with pytest.raises(BackendError) as caught:
        await limiter.acquire("acme", [WEBHOOKS])
    assert isinstance(caught.value.cause, TimeoutError)
    assert "50 ms" in str(caught.value)


async def test_breaker_opens_probes_and_closes(
    limiter: RedisBuckets, client: FakeClient, breaker_clock: FakeClock
) -> None:
    """Three failed batches open the breaker: no round trips until the cool-down, then a probe."""
    transitions: list[tuple[State, State]] = []
    limiter.on_transition(lambda old, new: transitions.append((old, new)))
    client.error = RedisConnectionError("down")
    for _ in range(3):
        with pytest.raises(BackendError):
            await limiter.acquire("acme", [WEBHOOKS])
    assert not limiter.healthy
    with pytest.raises(BackendError) as caught:
        await limiter.acquire("acme", [WEBHOOKS])
    assert isinstance(caught.value.cause, CircuitOpen)
    assert len(client.sent) == 3
    client.error = None
    breaker_clock.advance(1.0)
    assert (await limiter.acquire("acme", [WEBHOOKS])).allowed
    assert limiter.healthy and len(client.sent) == 4
    assert [new for _, new in transitions] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


async def test_waiters_queued_behind_the_failure_that_opened_the_breaker_fail_fast(
    limiter: RedisBuckets, client: FakeClient
) -> None:
    """Acquires already queued when the breaker opens are not sent to Redis."""
    client.error = RedisConnectionError("down")
    for _ in range(2):
        with pytest.raises(BackendError):
            await limiter.acquire("acme", [WEBHOOKS])
    client.hang = True
    opening = asyncio.create_task(limiter.acquire("acme", [WEBHOOKS]))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    queued = asyncio.create_task(limiter.acquire("acme", [WEBHOOKS]))
    results = await asyncio.gather(opening, queued, return_exceptions=True)
    assert isinstance(results[1], BackendError) and isinstance(results[1].cause, CircuitOpen)
    assert len(client.sent) == 3


async def test_lost_script_is_loaded_and_resent(limiter: RedisBuckets, client: FakeClient) -> None:
    """After NOSCRIPT (a restarted server) the script is loaded and the batch sent again."""
    client.has_script = False
    decisions = await asyncio.gather(*(limiter.acquire("acme", [WEBHOOKS, LLM]) for _ in range(2)))
    assert all(d.allowed for d in decisions)
    assert client.loads == 1
    assert [cmd[1] for batch in client.sent for cmd in batch] == ["sha-1", "sha-1", "sha-2", "sha-2"]


async def test_error_reply_fails_only_its_caller(limiter: RedisBuckets, client: FakeClient) -> None:
    """A script error for one acquire is that caller's BackendError; Redis counts as up."""
    client.reply = ResponseError("WRONGTYPE")
    with pytest.raises(BackendError) as caught:
        await limiter.acquire("acme", [WEBHOOKS])
    assert isinstance(caught.value.cause, ResponseError)


async def test_acquire_needs_a_rule(limiter: RedisBuckets) -> None:
    """An empty rule list is a programming error, not a store failure."""
    with pytest.raises(ValueError, match="at least one rule"):
        await limiter.acquire("acme", [])


@pytest.mark.parametrize("tenant", ["acme", "a:b", "x}y", "{odd"], ids=["plain", "colon", "brace", "open"])
def test_a_tenants_keys_share_one_cluster_slot(tenant: str) -> None:
    """Buckets, dedup keys and leases of one tenant hash to one slot, as a script needs."""
    keys = [bucket_key(tenant, "webhooks"), bucket_key(tenant, "llm"), dedup_key(tenant, "t")]
    keys.append(lease_key(tenant, "concurrent_calls"))
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_now_is_read_when_acquire_is_called(limiter: RedisBuckets, client: FakeClient, clock: FakeClock) -> None:
    """An injected clock is read at acquire(), not when the batch leaves, as in memory."""
    client.hang = True
    first = asyncio.create_task(limiter.acquire("acme", [WEBHOOKS]))
    await asyncio.sleep(0)
    second = asyncio.create_task(limiter.acquire("acme", [WEBHOOKS]))
    await asyncio.sleep(0)
    clock.advance(5.0)
    client.hang = False
    await asyncio.gather(first, second, return_exceptions=True)
    assert [batch[0][4] for batch in client.sent] == ["1000.0", "1000.0"]
