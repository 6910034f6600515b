"""The daily spend ledger: what each tenant spent per UTC day, by part, against a daily cap.

Money is integer micro-dollars (µ$), so sums are exact. A webhook is charged at once (`charge`:
admitted only if it fits under the cap); a call-out whose price is known only afterwards (an
LLM answer) reserves an estimate first, then commits the real cost or releases the hold; usage
learnt after the fact (a call's minutes) is added unconditionally (`add`). A reservation expires
at its ttl, so one held by an instance that died stops counting.

One protocol, two stores (in process; Redis, one script next to the data), and FailoverLedger,
which handlers use: the shared store when it answers, the tenant's `on_store_failure` when not.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import lru_cache
from typing import Any, Protocol

from gateway.clock import Clock, monotonic
from gateway.errors import BackendError
from gateway.limits.base import FailureMode
from gateway.limits.breaker import CircuitBreaker, State
from gateway.limits.redis import CircuitOpen
from gateway.limits.redis_client import RedisClient, guard, lua, now_arg

log = logging.getLogger(__name__)

BUDGET_SCRIPT = "redis_budget.lua"

# A day's keys outlive the day by this many days: the cost report reads recent days (the last
# week, and a day to spare); nothing reads older ones, and each tenant-day is memory in Redis.
RETENTION_DAYS = 8

DAY_SECONDS = 86_400
_EPOCH = date(1970, 1, 1)

Cost = Mapping[str, int]
"""µ$ by part ("webhook", "voice", "stream", "sms", "llm", or any other name)."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """`amount` µ$ held against `tenant`'s cap for `day` until committed, released or expired.

    local: made by FailoverLedger's local ledger while the shared one failed; its commit and
    release go there too.
    """

    tenant: str
    day: str
    id: str
    amount: int
    local: bool = False


@dataclass(frozen=True, slots=True)
class Spend:
    """One tenant's day: µ$ spent by part, and µ$ held by live reservations."""

    day: str
    parts: Mapping[str, int]
    reserved: int

    @property
    def total(self) -> int:
        """µ$ spent, all parts together (reservations not included)."""
        return sum(self.parts.values())


class Ledger(Protocol):
    """A store of daily spend; shared stores raise BackendError when they fail."""

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool | None:
        """In-process store: the answer at once; a shared store: None (await charge)."""
        ...

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool:
        """Atomically: admitted iff cap is None or total spent + live reservations + sum(cost)
        <= cap; when admitted the cost is added to the day's parts. Used per webhook."""
        ...

    async def reserve(self, tenant: str, day: str, amount: int, cap: int | None, ttl: float) -> Reservation | None:
        """Hold `amount` against the cap (None when it does not fit). A reservation not
        committed or released within ttl seconds stops counting (an instance that died holding it)."""
        ...

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        """Drop the reservation and add the real cost (which may differ from the estimate),
        whether or not the reservation expired meanwhile: the money was spent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation, add nothing; idempotent."""
        ...

    async def add(self, entries: Sequence[tuple[str, str, Cost]]) -> None:
        """Unconditional adds of (tenant, day, cost) (usage known only after the fact, e.g. a
        call's minutes), many tenants at once: one pipeline round trip for Redis."""
        ...

    async def spend(self, tenant: str, day: str) -> Spend: ...

    async def close(self) -> None: ...


def utc_day(epoch_seconds: float) -> str:
    """The UTC date of a Unix time, as 'YYYY-MM-DD'."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_seconds))


@lru_cache(maxsize=64)
def day_end(day: str) -> int:
    """The Unix time at which `day` ('YYYY-MM-DD', UTC) ends; ValueError for any other form."""
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        parsed = None
    # fromisoformat() also takes '20240501' and '2024-W18-3': one spelling per day, or a day's
    # spend would be split across keys.
    if parsed is None or parsed.isoformat() != day:
        raise ValueError(f"day {day!r}: expected a UTC date as YYYY-MM-DD")
    return ((parsed - _EPOCH).days + 1) * DAY_SECONDS


def expire_at(day: str) -> int:
    """When a day's keys go: RETENTION_DAYS after the day ends (Unix seconds)."""
    return day_end(day) + RETENTION_DAYS * DAY_SECONDS


def _days_before(day: str, days: int) -> str:
    return date.fromordinal(date.fromisoformat(day).toordinal() - days).isoformat()


def _new_id() -> str:
    return uuid.uuid4().hex


def _check_reservation(amount: int, ttl: float) -> None:
    if amount < 0 or not ttl > 0:
        raise ValueError(f"reserve() needs amount >= 0 and ttl > 0, got {amount}, {ttl}")


class MemoryLedger:
    """The ledger of one process: exact, no I/O; the clock is used only for reservation expiry.

    Days more than RETENTION_DAYS before the newest day written are forgotten, as Redis
    expires them, so a long-running process holds about RETENTION_DAYS days per tenant.
    """

    def __init__(self, clock: Clock = monotonic) -> None:
        self._clock = clock
        self._spent: dict[tuple[str, str], dict[str, int]] = {}
        # (tenant, day) -> reservation id -> (amount, expiry)
        self._held: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        self._newest = ""

    def _reserved(self, key: tuple[str, str]) -> int:
        held = self._held.get(key)
        if not held:
            return 0
        now = self._clock()
        # A reservation lives while its expiry is after now (as redis_budget.lua).
        for dead in [i for i, (_, expiry) in held.items() if expiry <= now]:
            del held[dead]
        if not held:
            del self._held[key]
            return 0
        return sum(amount for amount, _ in held.values())

    def _fits(self, key: tuple[str, str], amount: int, cap: int | None) -> bool:
        if cap is None:
            return True
        parts = self._spent.get(key)
        spent = sum(parts.values()) if parts else 0
        return spent + self._reserved(key) + amount <= cap

    def _add(self, key: tuple[str, str], cost: Cost) -> None:
        parts = self._spent.get(key)
        if parts is None:
            if key[1] > self._newest:
                self._forget_before(key[1])
            parts = self._spent[key] = {}
        for part, amount in cost.items():
            parts[part] = parts.get(part, 0) + amount

    def _forget_before(self, newest: str) -> None:
        # Runs once per new day, not per charge: ISO dates compare as strings.
        self._newest = newest
        cutoff = _days_before(newest, RETENTION_DAYS)
        for store in (self._spent, self._held):
            for old in [key for key in store if key[1] < cutoff]:
                del store[old]

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool:
        """The synchronous core of charge(): the webhook fast path awaits nothing."""
        day_end(day)
        key = (tenant, day)
        if not self._fits(key, sum(cost.values()), cap):
            return False
        self._add(key, cost)
        return True

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool:
        return self.charge_now(tenant, day, cost, cap)

    async def reserve(self, tenant: str, day: str, amount: int, cap: int | None, ttl: float) -> Reservation | None:
        _check_reservation(amount, ttl)
        day_end(day)
        key = (tenant, day)
        if not self._fits(key, amount, cap):
            return None
        reservation = Reservation(tenant, day, _new_id(), amount)
        self._held.setdefault(key, {})[reservation.id] = (amount, self._clock() + ttl)
        return reservation

    def _drop(self, reservation: Reservation) -> None:
        key = (reservation.tenant, reservation.day)
        held = self._held.get(key)
        if held is not None:
            held.pop(reservation.id, None)
            if not held:
                del self._held[key]

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        self._drop(reservation)
        self._add((reservation.tenant, reservation.day), cost)

    async def release(self, reservation: Reservation) -> None:
        self._drop(reservation)

    async def add(self, entries: Sequence[tuple[str, str, Cost]]) -> None:
        for _, day, _ in entries:
            day_end(day)  # all checked before any is added, as the Redis pipeline is built first
        for tenant, day, cost in entries:
            self._add((tenant, day), cost)

    async def spend(self, tenant: str, day: str) -> Spend:
        day_end(day)
        key = (tenant, day)
        return Spend(day, dict(self._spent.get(key, {})), self._reserved(key))

    async def close(self) -> None:
        self._spent.clear()
        self._held.clear()


def spent_key(tenant: str, day: str) -> str:
    # The hash tag {tenant} puts a tenant's keys in one Cluster slot, as the script needs.
    return f"sy:{{{tenant}}}:$:{day}"


def held_key(tenant: str, day: str) -> str:
    return f"sy:{{{tenant}}}:$r:{day}"


def _held_member(reservation: Reservation) -> str:
    # The amount rides in the member, so summing live holds needs no second key.
    return f"{reservation.id}:{reservation.amount}"


def _flat(cost: Cost) -> list[str | int]:
    args: list[str | int] = []
    for part, amount in cost.items():
        args += [part, amount]
    return args


class RedisLedger:
    """The ledger shared by every instance, over one Redis or Redis Cluster client (the caller's).

    clock: None in production (the script reads Redis TIME for reservation expiry: one clock for
    all instances); tests inject one. breaker: the limiter's, to share its verdict on this Redis:
    while it is open a charge fails at once instead of waiting out the deadline per webhook.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        clock: Clock | None = None,
        deadline: float = 0.050,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._deadline = deadline
        self._breaker = breaker
        self._script = client.register_script(lua(BUDGET_SCRIPT))

    def _allow(self, operation: str) -> None:
        if self._breaker is not None and not self._breaker.allow():
            raise BackendError("redis", operation, CircuitOpen("circuit breaker is open"))

    def _record(self, error: BaseException | None) -> None:
        if self._breaker is None:
            return
        if error is None:
            self._breaker.record_success()
        elif isinstance(error, BackendError) or self._breaker.state is State.HALF_OPEN:
            # A probe cancelled by its caller counts as failed: a half-open breaker would
            # otherwise wait for its verdict for ever.
            self._breaker.record_failure()

    async def _run(self, operation: str, tenant: str, day: str, *args: str | int) -> Any:
        name = f"ledger {operation}"
        expiry = expire_at(day)  # a malformed day fails here, before the breaker hears of the call
        keys = [spent_key(tenant, day), held_key(tenant, day)]
        now = now_arg(None if self._clock is None else self._clock())
        self._allow(name)
        try:
            async with guard(name, self._deadline):
                reply = await self._script(keys=keys, args=[now, operation, expiry, *args], client=self._client)
        except BaseException as error:
            self._record(error)
            raise
        self._record(None)
        return reply

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None) -> None:
        """Always None: a shared store answers only after a round trip."""
        return None

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool:
        cap_arg = "" if cap is None else cap
        return int(await self._run("charge", tenant, day, cap_arg, *_flat(cost))) == 1

    async def reserve(self, tenant: str, day: str, amount: int, cap: int | None, ttl: float) -> Reservation | None:
        _check_reservation(amount, ttl)
        reservation = Reservation(tenant, day, _new_id(), amount)
        cap_arg = "" if cap is None else cap
        held = await self._run("reserve", tenant, day, cap_arg, _held_member(reservation), amount, repr(ttl))
        return reservation if int(held) == 1 else None

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        await self._run("commit", reservation.tenant, reservation.day, _held_member(reservation), *_flat(cost))

    async def release(self, reservation: Reservation) -> None:
        await self._run("release", reservation.tenant, reservation.day, _held_member(reservation))

    async def add(self, entries: Sequence[tuple[str, str, Cost]]) -> None:
        # Summed per key and part first: a burst of status callbacks for one tenant is one HINCRBY.
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for tenant, day, cost in entries:
            day_end(day)
            if cost:
                parts = totals.setdefault((tenant, day), {})
                for part, amount in cost.items():
                    parts[part] = parts.get(part, 0) + amount
        if not totals:
            return
        self._allow("ledger add")
        pipe = self._client.pipeline(transaction=False)
        for (tenant, day), parts in totals.items():
            key = spent_key(tenant, day)
            for part, amount in parts.items():
                pipe.hincrby(key, part, amount)
            pipe.expireat(key, expire_at(day))
        try:
            async with guard("ledger add", self._deadline):
                replies = await pipe.execute(raise_on_error=False)
            failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
            if failed is not None:
                raise BackendError("redis", "ledger add", failed)
        except BaseException as error:
            self._record(error)
            raise
        self._record(None)

    async def spend(self, tenant: str, day: str) -> Spend:
        flat, reserved = await self._run("spend", tenant, day)
        parts = {
            flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i]): int(flat[i + 1])
            for i in range(0, len(flat), 2)
        }
        return Spend(day, parts, int(reserved))

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""


FailoverTransition = Callable[[bool, BackendError | None], None]
"""Called with (degraded, the error that made it so | None when healthy again)."""


class FailoverLedger:
    """What handlers use: the primary ledger when it answers, the tenant's failure mode when not.

    On BackendError, charge and reserve follow `mode` (base.FailureMode):
      local   this instance's ledger, the cap divided by the live instances;
      open    admit, recorded in this instance's ledger without a cap;
      closed  refuse.
    commit, release and add never raise BackendError: they run after the money is spent (often
    in a `finally`), so a failed write is kept in the local ledger and logged once per streak.
    """

    def __init__(self, primary: Ledger, local: MemoryLedger, instances: Callable[[], int] = lambda: 1) -> None:
        self._primary = primary
        # An in-process primary never fails and never waits: charge it without a coroutine.
        self._sync_primary = primary if isinstance(primary, MemoryLedger) else None
        self._local = local
        self._instances = instances
        self._degraded = False
        self._writes_failing = False
        self._listeners: list[FailoverTransition] = []

    @property
    def primary(self) -> Ledger:
        return self._primary

    @property
    def local(self) -> MemoryLedger:
        return self._local

    @property
    def degraded(self) -> bool:
        """True from the primary's first failure until it answers again."""
        return self._degraded

    def on_transition(self, callback: FailoverTransition) -> None:
        """Called with the new `degraded` value (and the error, on failing) when it changes."""
        self._listeners.append(callback)

    def _share(self, cap: int | None) -> int | None:
        return None if cap is None else cap // max(1, self._instances())

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None) -> bool | None:
        """The answer at once when the primary is in process, else None: await charge()."""
        if self._sync_primary is None:
            return None
        return self._sync_primary.charge_now(tenant, day, cost, cap)

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None, mode: FailureMode = "local") -> bool:
        try:
            admitted = await self._primary.charge(tenant, day, cost, cap)
        except BackendError as error:
            self._set_degraded(True, error)
            if mode == "closed":
                return False
            return self._local.charge_now(tenant, day, cost, self._share(cap) if mode == "local" else None)
        self._set_degraded(False)
        return admitted

    async def reserve(
        self,
        tenant: str,
        day: str,
        amount: int,
        cap: int | None,
        ttl: float,
        mode: FailureMode = "local",
    ) -> Reservation | None:
        try:
            reservation = await self._primary.reserve(tenant, day, amount, cap, ttl)
        except BackendError as error:
            self._set_degraded(True, error)
            if mode == "closed":
                return None
            local_cap = self._share(cap) if mode == "local" else None
            held = await self._local.reserve(tenant, day, amount, local_cap, ttl)
            return None if held is None else replace(held, local=True)
        self._set_degraded(False)
        return reservation

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        if reservation.local:
            await self._local.commit(reservation, cost)
            return
        try:
            await self._primary.commit(reservation, cost)
        except BackendError as error:
            # The shared hold expires at its ttl; the cost is kept here, not lost.
            self._write_failed(error, f"commit of reservation {reservation.id} of {reservation.tenant}")
            await self._local.add([(reservation.tenant, reservation.day, cost)])
            return
        self._write_succeeded()

    async def release(self, reservation: Reservation) -> None:
        if reservation.local:
            await self._local.release(reservation)
            return
        try:
            await self._primary.release(reservation)
        except BackendError as error:
            # Nothing is lost: the hold stops counting at its ttl, which is what the ttl is for.
            self._write_failed(error, f"release of reservation {reservation.id} of {reservation.tenant}")
            return
        self._write_succeeded()

    async def add(self, entries: Sequence[tuple[str, str, Cost]]) -> None:
        try:
            await self._primary.add(entries)
        except BackendError as error:
            self._write_failed(error, f"add of {len(entries)} entries")
            await self._local.add(entries)
            return
        self._write_succeeded()

    async def spend(self, tenant: str, day: str) -> Spend:
        """The primary's figure; BackendError when it fails, since this instance's share is
        not the day's spend and a report must not pass it off as such."""
        try:
            spent = await self._primary.spend(tenant, day)
        except BackendError as error:
            self._set_degraded(True, error)
            raise
        self._set_degraded(False)
        return spent

    def _write_failed(self, error: BackendError, what: str) -> None:
        self._set_degraded(True, error)
        if not self._writes_failing:
            # Once per streak: during an outage every call's usage would log a line.
            self._writes_failing = True
            log.warning("spend ledger: %s kept in this instance only: %s", what, error)

    def _write_succeeded(self) -> None:
        self._set_degraded(False)
        if self._writes_failing:
            self._writes_failing = False
            log.info("spend ledger: shared writes succeed again")

    def _set_degraded(self, degraded: bool, error: BackendError | None = None) -> None:
        if degraded == self._degraded:
            return
        self._degraded = degraded
        for callback in self._listeners:
            try:
                callback(degraded, error)
            except Exception:
                # A broken log or metric hook must not break the charge it reports on.
                log.exception("ledger failover transition callback failed")

    async def close(self) -> None:
        await self._primary.close()
        await self._local.close()
