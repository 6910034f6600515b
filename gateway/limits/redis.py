"""Redis limit store: redis_bucket.lua repeats bucket.take() atomically, next to the data.

Acquires are coalesced (coalesce.py): one pipeline of EVALSHAs per round trip, so throughput
does not pay one round trip per request. Every round trip runs under a deadline, and a circuit
breaker stops calling a Redis that keeps failing; either way the caller gets BackendError and
decides (failover.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway.clock import Clock
from gateway.errors import BackendError
from gateway.limits.base import DEDUP_TTL, MAX_RETRY_TOKEN, BudgetOutcome, Decision, RetryKey, RetryOutcome, Rule
from gateway.limits.breaker import CircuitBreaker, State, Transition
from gateway.limits.budget import BudgetCharge, expire_at
from gateway.limits.budget_redis import LEDGER_LIBRARY, hold_args, ledger_keys
from gateway.limits.coalesce import Coalescer
from gateway.limits.redis_client import CircuitOpen, Pipe, RedisClient, gate_of, guard, is_noscript, lua, now_arg

BUCKET_SCRIPT = "redis_bucket.lua"

# The script's reply elements, by value.
RETRY_OUTCOMES: tuple[RetryOutcome, ...] = ("new", "replay", "mismatch")
BUDGET_OUTCOMES: tuple[BudgetOutcome, ...] = ("none", "charged", "over")


@dataclass(frozen=True, slots=True)
class _Charge:
    tenant: str
    rules: Sequence[Rule]
    cost: int
    retry: RetryKey | None
    now: str  # read when acquire() is called, as MemoryBuckets does; '' = Redis TIME
    budget: BudgetCharge | None = None


def bucket_key(tenant: str, rule: str) -> str:
    # The hash tag {tenant} puts all of a tenant's keys in one Cluster slot, which a script
    # touching several of them requires.
    return f"sy:{{{tenant}}}:b:{rule}"


def dedup_key(tenant: str, token: str) -> str:
    return f"sy:{{{tenant}}}:d:{token}"


class RedisBuckets:
    """The BucketStore protocol over one Redis or Redis Cluster client (which the caller owns).

    clock: None in production (the script reads Redis TIME: one clock for all instances);
    tests inject one, passed to the script as `now`.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        clock: Clock | None = None,
        deadline: float = 0.050,
        dedup_ttl: float = DEDUP_TTL,
        breaker: CircuitBreaker | None = None,
        max_batch: int = 256,
        budget_deadline: float | None = None,
    ) -> None:
        self._client = client
        self._gate = gate_of(client)
        self._clock = clock
        self._deadline = deadline
        # A batch carrying a budget gets the ledger's patience: money before latency. Measured at
        # 256 connections on a saturated loop, a batch's round trip as the loop sees it passed
        # 50 ms while Redis answered within one, and every budgeted webhook in it failed over.
        self._budget_deadline = deadline if budget_deadline is None else max(deadline, budget_deadline)
        self._dedup_ms = max(1, round(dedup_ttl * 1000))
        self._breaker = breaker or CircuitBreaker()
        self._script = client.register_script(lua(LEDGER_LIBRARY, BUCKET_SCRIPT))
        self._coalescer: Coalescer[_Charge, Decision] = Coalescer(self._send, max_batch)
        # Batches on a connection of their own, packed by hiredis (redis_client.Pipe); a cluster
        # goes through redis-py's pipeline, which routes each script to its tenant's node.
        self._pipe = Pipe(client) if isinstance(client, Redis) else None

    @property
    def healthy(self) -> bool:
        """False while the breaker is open or probing."""
        return self._breaker.healthy

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def round_trips(self) -> int:
        """Batches sent to Redis so far (each one pipeline, plus a reload after NOSCRIPT)."""
        return self._coalescer.batches

    def on_transition(self, callback: Transition) -> None:
        self._breaker.on_transition(callback)

    async def acquire(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        *,
        budget: BudgetCharge | None = None,
    ) -> Decision:
        if not rules:
            raise ValueError("acquire() needs at least one rule")
        if budget is not None:
            expire_at(budget.day)  # a malformed day fails here, before it reaches the script
        if not self._breaker.allow():
            raise BackendError("redis", "acquire", CircuitOpen("circuit breaker is open"))
        now = now_arg(None if self._clock is None else self._clock())
        if retry is not None and len(retry.token) > MAX_RETRY_TOKEN:
            retry = None  # not remembered: see MAX_RETRY_TOKEN
        return await self._coalescer.submit(_Charge(tenant, rules, cost, retry, now, budget))

    async def _send(self, charges: Sequence[_Charge]) -> list[Decision | BaseException]:
        if self._breaker.state is State.OPEN:
            # Queued behind the batch that opened the breaker: fail fast, as new callers do.
            raise BackendError("redis", "acquire", CircuitOpen("circuit breaker is open"))
        calls = [self._call(charge) for charge in charges]
        try:
            budgeted = any(charge.budget is not None for charge in charges)
            deadline = self._budget_deadline if budgeted else self._deadline
            # The pipe's connection is its own, outside the pool: it takes no slot at the gate.
            async with guard("acquire", deadline, None if self._pipe is not None else self._gate):
                replies = await self._pipeline(calls)
                lost = [i for i, reply in enumerate(replies) if is_noscript(reply)]
                if lost:
                    # A restarted server has no scripts; NOSCRIPT means nothing ran, so resend.
                    self._script.sha = await self._load_script()
                    again = await self._pipeline([calls[i] for i in lost])
                    for i, reply in zip(lost, again, strict=True):
                        replies[i] = reply
        except BackendError as error:
            if not error.overloaded or self._breaker.state is State.HALF_OPEN:
                # A queue at the gate is our back-pressure, not the store failing (a probe that
                # never reached it still fails: the breaker would wait for its verdict for ever).
                self._breaker.record_failure()
            raise
        results: list[Decision | BaseException] = [
            BackendError("redis", "acquire", reply)
            if isinstance(reply, BaseException)
            else _decision(reply, charge.rules, charge.budget is not None)
            for charge, reply in zip(charges, replies, strict=True)
        ]
        if all(isinstance(result, BaseException) for result in results):
            self._breaker.record_failure()
        else:
            self._breaker.record_success()
        return results

    def _call(self, charge: _Charge) -> tuple[list[str], list[str | int]]:
        keys = [bucket_key(charge.tenant, rule.name) for rule in charge.rules]
        dedup_ms = 0
        binding = ""
        if charge.retry is not None:
            keys.append(dedup_key(charge.tenant, charge.retry.token))
            dedup_ms = self._dedup_ms
            binding = charge.retry.binding
        args: list[str | int] = [charge.now, charge.cost, dedup_ms, binding, len(charge.rules)]
        for rule in charge.rules:
            # repr() passes the very double bucket.take() multiplies by.
            args += [repr(rule.interval), rule.burst]
        budget = charge.budget
        if budget is not None:
            # The day's keys share the tenant's hash tag: one Cluster slot with its buckets.
            keys += ledger_keys(charge.tenant, budget.day)
            args += ["" if budget.cap is None else budget.cap, expire_at(budget.day), *hold_args(budget.hold)]
            replay = budget.replay or {}
            args.append(len(replay))
            for part, amount in replay.items():
                args += [part, amount]
            for part, amount in budget.cost.items():
                args += [part, amount]
        return keys, args

    async def _load_script(self) -> str:
        """SCRIPT LOAD, on the pipe's own connection when there is one. Not on the client's
        pool: its connections are the gate's, and a burst holding them all made the first batch
        after a restart fail with MaxConnectionsError, falling every tenant of it back (found
        by tests/integration/limits/test_pressure.py on a slow machine)."""
        if self._pipe is None:
            sha: str = await self._client.script_load(self._script.script)
            return sha
        script = self._script.script
        (reply,) = await self._pipe.run(
            [("SCRIPT", "LOAD", script if isinstance(script, str | bytes) else bytes(script))]
        )
        if isinstance(reply, BaseException):
            raise reply
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def _pipeline(self, calls: Sequence[tuple[list[str], list[str | int]]]) -> list[Any]:
        sha = self._script.sha
        if self._pipe is not None:
            return await self._pipe.run([("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            # Not pipe.evalsha(): redis-py's cluster pipeline refuses that method, though it
            # routes the command itself by its keys (all in the tenant's slot) just fine.
            pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def close(self) -> None:
        await self._coalescer.close()
        if self._pipe is not None:
            await self._pipe.close()


def _decision(reply: Sequence[Any], rules: Sequence[Rule], budgeted: bool) -> Decision:
    allowed, index, remaining, retry_after, reset, retry, budget, spent = reply
    rule = rules[int(index) - 1]
    return Decision(
        bool(allowed),
        int(remaining),
        float(retry_after),
        float(reset),
        rule,
        RETRY_OUTCOMES[int(retry)],
        BUDGET_OUTCOMES[int(budget)],
        int(spent) if budgeted else None,  # with a budget the script always says (budget.replay landed)
    )
