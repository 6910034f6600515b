"""Limit stores picked from one URL: the limiter, the lease store, the instance registry and
the spend ledger."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.clock import Clock, monotonic
from gateway.errors import BackendError
from gateway.limits.answers import AnswerStore, MemoryAnswers, RedisAnswers
from gateway.limits.base import DEDUP_TTL, BucketStore
from gateway.limits.breaker import CircuitBreaker
from gateway.limits.budget import MemoryLedger
from gateway.limits.budget_failover import FailoverLedger
from gateway.limits.budget_redis import RedisLedger
from gateway.limits.failover import FailoverLimiter
from gateway.limits.instances import InstanceRegistry
from gateway.limits.leases import LeaseStore, MemoryLeases, RedisLeases
from gateway.limits.memory import MemoryBuckets
from gateway.limits.redis import RedisBuckets
from gateway.limits.redis_client import POOL_SIZE, RedisClient, connect

# An API client's Idempotency-Key is remembered a day (as Stripe's are): long enough for any
# client's retries; at most this many in one process (each answer is a few hundred bytes).
IDEMPOTENCY_TTL = 24 * 3600.0
IDEMPOTENCY_KEPT = 100_000

# The spend ledger's deadline per Redis call (the buckets' is 50 ms): still far inside Twilio's 15 s.
LEDGER_DEADLINE = 0.5

# scheme -> (shared by instances, Redis Cluster)
SCHEMES: dict[str, tuple[bool, bool]] = {
    "memory": (False, False),
    "redis": (True, False),
    "rediss": (True, False),
    "redis+cluster": (True, True),
    "rediss+cluster": (True, True),
}


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        allowed = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"limit store URL {url!r}: unknown scheme; use one of {allowed}")
    return scheme


def is_shared(url: str) -> bool:
    """Do instances (or workers) using this URL share limits? memory:// does not."""
    return SCHEMES[_scheme(url)][0]


@dataclass(frozen=True, slots=True)
class Stores:
    """Everything the app charges limits against; `failover` and `ledger` are what requests go through."""

    url: str
    limiter: BucketStore
    leases: LeaseStore
    failover: FailoverLimiter
    instances: InstanceRegistry | None
    client: RedisClient | None
    ledger: FailoverLedger
    answers: AnswerStore
    # API clients' Idempotency-Key answers (outbound/idempotency.py): the same stores, kept a day.
    idempotent: AnswerStore

    async def start(self) -> None:
        """Start the instance heartbeat (Redis only); call inside the running loop. Its first
        beat runs now: a Redis unreachable from start-up is `degraded` at once (/readyz says so)."""
        if self.instances is not None:
            self.instances.on_beat(self._pulse)
            await self.instances.start()

    def _pulse(self, error: BackendError | None) -> None:
        """A heartbeat's outcome as the store's health while no request asks it: a failure
        marks both parts degraded; an answer clears them unless the limiter's breaker is still
        open (its own probe decides then, so the state does not flap with every beat)."""
        healthy = not isinstance(self.limiter, RedisBuckets) or self.limiter.healthy
        for part in (self.failover, self.ledger):
            if error is not None:
                part.mark(True, error)
            elif healthy:
                part.mark(False)
        if error is None and self.ledger.unsynced:
            # Redis answers again: what this instance booked meanwhile goes back now, not at its
            # next request (until then another instance decides without it: the bound's slack).
            self.ledger.replay_soon()

    def sweep(self) -> int:
        """Forget the in-process state that went idle: buckets full again, lapsed leases.
        Called on a timer (app.py), so memory follows the tenants active lately even while no
        request comes; returns how many entries went."""
        dropped = self.failover.local.sweep()
        if isinstance(self.limiter, MemoryBuckets):
            dropped += self.limiter.sweep()
        if isinstance(self.leases, MemoryLeases):
            dropped += self.leases.sweep()
        return dropped

    async def close(self) -> None:
        if self.instances is not None:
            await self.instances.close()
        await self.failover.close()
        await self.leases.close()
        await self.ledger.close()
        await self.answers.close()
        await self.idempotent.close()
        if self.client is not None:
            await self.client.aclose()


def stores_from_url(
    url: str = "memory://",
    *,
    clock: Clock | None = None,
    deadline: float = 0.050,
    dedup_ttl: float = DEDUP_TTL,
    breaker: CircuitBreaker | None = None,
    instance_id: str | None = None,
    pool_size: int = POOL_SIZE,
) -> Stores:
    """Build the stores for `url`: memory://, redis[s]://host:port/db, redis[s]+cluster://host:port.

    clock: for memory, defaults to time.monotonic; for Redis, None means Redis TIME (one clock
    for every instance) and a clock given is passed to the scripts (tests).
    pool_size: Redis connections (calls in flight) at most; more callers wait their turn
    (redis_client.Gate), and every store of the app shares them.
    """
    scheme = _scheme(url)
    local = MemoryBuckets(clock or monotonic, dedup_ttl)
    if scheme == "memory":
        limiter = MemoryBuckets(clock or monotonic, dedup_ttl)
        ledger = FailoverLedger(MemoryLedger(clock or monotonic), MemoryLedger(clock or monotonic))
        return Stores(
            url,
            limiter,
            MemoryLeases(clock or monotonic),
            FailoverLimiter(limiter, local),
            None,
            None,
            ledger,
            MemoryAnswers(clock or monotonic),
            MemoryAnswers(clock or monotonic, ttl=IDEMPOTENCY_TTL, limit=IDEMPOTENCY_KEPT),
        )
    cluster = SCHEMES[scheme][1]
    driver_url = urlsplit(url)._replace(scheme=scheme.removesuffix("+cluster")).geturl()
    client = connect(driver_url, cluster=cluster, pool_size=pool_size)
    # The breaker's cool-down runs on the same clock as everything else, so tests step through it.
    breaker = breaker or CircuitBreaker(clock=clock or monotonic)
    redis_limiter = RedisBuckets(
        client,
        clock=clock,
        deadline=deadline,
        dedup_ttl=dedup_ttl,
        breaker=breaker,
        budget_deadline=LEDGER_DEADLINE,  # a webhook's budget rides with its buckets
    )
    registry = InstanceRegistry(client, instance_id, deadline=deadline, clock=clock)
    # The ledger shares the limiter's breaker: one Redis, one verdict on its health.
    # Money before latency: a charge gets longer than a bucket's round trip before it fails over
    # (a burst of charges timing out would each be admitted by the local share of the cap).
    redis_ledger = RedisLedger(client, clock=clock, deadline=max(deadline, LEDGER_DEADLINE), breaker=breaker)
    return Stores(
        url,
        redis_limiter,
        RedisLeases(client, clock=clock, deadline=deadline),
        FailoverLimiter(redis_limiter, local, registry.live_instances),
        registry,
        client,
        FailoverLedger(redis_ledger, MemoryLedger(clock or monotonic), registry.live_instances),
        # A claim is one small round trip; the ledger's longer deadline suits it (a retry waits).
        RedisAnswers(client, deadline=max(deadline, LEDGER_DEADLINE)),
        RedisAnswers(client, ttl=IDEMPOTENCY_TTL, deadline=max(deadline, LEDGER_DEADLINE)),
    )
