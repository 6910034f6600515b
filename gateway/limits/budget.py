"""The daily spend ledger: what each tenant spent per UTC day, by part, against a daily cap.

Money is integer micro-dollars (µ$), so sums are exact. A webhook is charged at once (`charge`:
admitted only if it fits under the cap); a call-out whose price is known only afterwards (an
LLM answer) reserves an estimate first, then commits the real cost or releases the hold; usage
learnt after the fact (a call's minutes) is added unconditionally (`add`), at most once per
idempotency id. A reservation expires at its ttl, so one held by an instance that died stops
counting.

This module: the values, the Ledger protocol, the day helpers and the in-process store
(MemoryLedger). The shared store is budget_redis.RedisLedger (one script next to the data);
handlers use budget_failover.FailoverLedger: the shared store when it answers, the tenant's
`on_store_failure` when not.
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Protocol

from gateway.clock import Clock, monotonic

# A day's keys outlive the day by this many days: the cost report reads recent days (the last
# week, and a day to spare); nothing reads older ones, and each tenant-day is memory in Redis.
RETENTION_DAYS = 8

DAY_SECONDS = 86_400
_EPOCH = date(1970, 1, 1)

# How long an add()'s `once` id is remembered. A call lasts at most 4 hours and Twilio sends its
# final status callback (and its retries) within minutes of its end, so two days cover every
# genuine delivery with room to spare, and keep the id past midnight: a call that ends at 23:59
# is still booked once at 00:01. Longer would only cost memory per call: a replay after this
# books again, at most once per ONCE_TTL.
ONCE_TTL = 2 * DAY_SECONDS

Cost = Mapping[str, int]
"""µ$ by part ("webhook", "voice", "stream", "sms", "llm", or any other name)."""

Entry = tuple[str, str, Cost, str | None]
"""One add(): (tenant, day, cost, once). once: None, or an idempotency id (e.g. "call:CA…") that
books the entry only if this tenant has not booked that id within ONCE_TTL."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """`amount` µ$ held against `tenant`'s cap for `day` until committed, released or expired.

    Another request (on any instance) may settle it by rebuilding it from tenant, day, id and
    amount, all four as held. local: made by FailoverLedger's local ledger while the shared one
    failed; its commit and release go there too.
    """

    tenant: str
    day: str
    id: str
    amount: int
    local: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold made with a charge, in the same step: `amount` µ$ held under `id` for `ttl`
    seconds, unless a live hold of that id is there already (a retry holds nothing more)."""

    id: str
    amount: int
    ttl: float


@dataclass(frozen=True, slots=True)
class BudgetCharge:
    """A webhook's cost on its tenant's day, charged with its buckets in one step (base.Decision
    .budget says how it went). cap None: counted, never refused."""

    day: str
    cap: int | None
    cost: Cost
    hold: Hold | None = None
    # What this instance booked for the tenant-day while the shared store failed: added first,
    # in the same step, so the charge is decided on the whole day (budget_failover.py).
    replay: Cost | None = None


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


TotalSeen = Callable[[str, str, int], None]
"""Told (tenant, day, µ$ spent + held) by a shared ledger after each reply that carried it."""


class Ledger(Protocol):
    """A store of daily spend; shared stores raise BackendError when they fail."""

    def on_total(self, callback: TotalSeen) -> None:
        """A shared store calls `callback` with every tenant-day total its replies carry (the
        figure a failover starts from); an in-process store never fails and calls nothing."""
        ...

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool | None:
        """In-process store: the answer at once; a shared store: None (await charge)."""
        ...

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool:
        """Atomically: admitted iff cap is None or total spent + live reservations (+ the hold,
        unless a live hold of its id is there) + sum(cost) <= cap; when admitted the cost is
        added to the day's parts and the hold made. Used per webhook."""
        ...

    async def reserve(
        self, tenant: str, day: str, amount: int, cap: int | None, ttl: float, *, id: str | None = None
    ) -> Reservation | None:
        """Hold `amount` against the cap (None when it does not fit). A reservation not
        committed or released within ttl seconds stops counting (an instance that died holding it).

        id: the reservation's id (default: a new random one). If a live reservation of this
        tenant and day has that id already, it is returned as held (its own amount and expiry,
        no second hold, no cap check): a retried request does not hold twice. Once committed,
        released or expired, the id may be reserved again.
        """
        ...

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        """Keep a live reservation for `ttl` seconds from now (its holder is still at work: a
        long stream holds its estimate only as long as someone heartbeats it); False when it is
        not live (settled or expired), which then stays so."""
        ...

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        """Drop the reservation and add the real cost (which may differ from the estimate),
        whether or not the reservation expired meanwhile: the money was spent."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop the reservation, add nothing; idempotent."""
        ...

    async def add(self, entries: Sequence[Entry]) -> None:
        """Unconditional adds (usage known only after the fact, e.g. a call's minutes), many
        tenants at once: one pipeline round trip for Redis. An entry with a `once` id is added
        only if its tenant has not booked that id within ONCE_TTL (a replayed status callback
        books nothing); atomically per entry. An entry with no cost books nothing, id included."""
        ...

    async def spend(self, tenant: str, day: str) -> Spend: ...

    async def close(self) -> None: ...


# The last day utc_day() named, by its number since 1970: a budgeted webhook asks once each, and
# strftime(gmtime()) was 1.3 µs of it (a day changes once a day).
_last_day: list[tuple[int | None, str]] = [(None, "")]


def utc_day(epoch_seconds: float) -> str:
    """The UTC date of a Unix time, as 'YYYY-MM-DD'."""
    number = int(epoch_seconds // DAY_SECONDS)
    last = _last_day[0]
    if last[0] == number:
        return last[1]
    day = time.strftime("%Y-%m-%d", time.gmtime(epoch_seconds))
    _last_day[0] = (number, day)
    return day


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


def new_reservation_id() -> str:
    return uuid.uuid4().hex


def check_reservation(amount: int, ttl: float) -> None:
    """ValueError for a hold no caller means: negative, or expired at once."""
    if amount < 0 or not ttl > 0:
        raise ValueError(f"reserve() needs amount >= 0 and ttl > 0, got {amount}, {ttl}")


class MemoryLedger:
    """The ledger of one process: exact, no I/O; the clock is used for reservation expiry and
    for forgetting `once` ids.

    Days more than RETENTION_DAYS before the newest day written are forgotten, as Redis
    expires them, so a long-running process holds about RETENTION_DAYS days per tenant.
    """

    def __init__(self, clock: Clock = monotonic) -> None:
        self._clock = clock
        self._spent: dict[tuple[str, str], dict[str, int]] = {}
        # (tenant, day) -> reservation id -> (amount, expiry)
        self._held: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        # (tenant, day) -> the sum of its live holds, kept as holds come and go: a charge reads
        # it instead of summing every hold (a busy tenant holds one per live call, up to 4 h).
        self._held_total: dict[tuple[str, str], int] = {}
        # Every hold's expiry, soonest first: (expiry, key, id). An extend pushes a new entry and
        # leaves the old one, which is skipped when it comes up (its expiry no longer matches).
        self._expiries: list[tuple[float, tuple[str, str], str]] = []
        # (tenant, once id) -> expiry. Every id lives ONCE_TTL on one monotonic clock, so
        # insertion order is expiry order: pruning stops at the first live id.
        self._once: dict[tuple[str, str], float] = {}
        self._newest = ""

    def on_total(self, callback: TotalSeen) -> None:
        """Nothing to tell: this ledger is never failed over from."""

    def _prune(self) -> None:
        """Drop the holds that expired: a reservation lives while its expiry is after now (as
        redis_budget.lua). O(log n) per hold over its life, nothing per call when none expired."""
        expiries = self._expiries
        if not expiries:
            return
        now = self._clock()
        while expiries and expiries[0][0] <= now:
            expiry, key, id = heapq.heappop(expiries)
            held = self._held.get(key)
            live = held.get(id) if held is not None else None
            if live is None or live[1] != expiry:
                continue  # settled already, or extended (a later entry stands for it)
            self._drop_held(key, id)

    def _reserved(self, key: tuple[str, str]) -> int:
        self._prune()
        return self._held_total.get(key, 0)

    def _hold(self, key: tuple[str, str], id: str, amount: int, expiry: float) -> None:
        self._held.setdefault(key, {})[id] = (amount, expiry)
        self._held_total[key] = self._held_total.get(key, 0) + amount
        heapq.heappush(self._expiries, (expiry, key, id))

    def _drop_held(self, key: tuple[str, str], id: str) -> None:
        held = self._held.get(key)
        if held is None:
            return
        live = held.pop(id, None)
        if live is None:
            return
        if held:
            self._held_total[key] -= live[0]
        else:
            del self._held[key]
            del self._held_total[key]

    def total_now(self, tenant: str, day: str) -> int:
        """µ$ spent and held by `tenant` on `day`, at once."""
        key = (tenant, day)
        parts = self._spent.get(key)
        return (sum(parts.values()) if parts else 0) + self._reserved(key)

    def held_now(self, tenant: str, day: str) -> int:
        """µ$ held by `tenant`'s live holds on `day`."""
        return self._reserved((tenant, day))

    def holds(self, tenant: str, day: str, id: str) -> bool:
        """Is a live hold of this id there?"""
        self._prune()
        held = self._held.get((tenant, day))
        return held is not None and id in held

    @property
    def holding(self) -> bool:
        """Any hold at all (some may have lapsed unpruned): asked per webhook, so O(1)."""
        return bool(self._held)

    def live_holds(self) -> list[tuple[str, str, str, int, float]]:
        """Every live hold: (tenant, day, id, µ$, seconds it has left)."""
        self._prune()
        now = self._clock()
        return [
            (tenant, day, id, amount, expiry - now)
            for (tenant, day), held in self._held.items()
            for id, (amount, expiry) in held.items()
        ]

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
        for store in (self._spent, self._held, self._held_total):
            for old in [key for key in store if key[1] < cutoff]:
                del store[old]
        # Their entries in _expiries are skipped when they come up (no hold matches them).

    def _first_booking(self, tenant: str, once: str) -> bool:
        """Remember `once` for ONCE_TTL; False if it is remembered already."""
        now = self._clock()
        while self._once:
            oldest, expiry = next(iter(self._once.items()))
            if expiry > now:
                break
            del self._once[oldest]
        key = (tenant, once)
        if key in self._once:
            return False
        self._once[key] = now + ONCE_TTL
        return True

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool:
        """The synchronous core of charge(): the webhook fast path awaits nothing."""
        day_end(day)
        key = (tenant, day)
        held = 0
        if hold is not None:
            self._prune()  # first: a dead hold's id is free again
            if hold.id not in self._held.get(key, ()):
                held = hold.amount
        if not self._fits(key, sum(cost.values()) + held, cap):
            return False
        if hold is not None and held:
            self._hold(key, hold.id, held, self._clock() + hold.ttl)
        self._add(key, cost)
        return True

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool:
        return self.charge_now(tenant, day, cost, cap, hold)

    async def reserve(
        self, tenant: str, day: str, amount: int, cap: int | None, ttl: float, *, id: str | None = None
    ) -> Reservation | None:
        check_reservation(amount, ttl)
        day_end(day)
        key = (tenant, day)
        if id is not None:
            self._prune()  # first: a dead hold's id is free again
            live = self._held.get(key, {}).get(id)
            if live is not None:
                return Reservation(tenant, day, id, live[0])
        if not self._fits(key, amount, cap):
            return None
        reservation = Reservation(tenant, day, new_reservation_id() if id is None else id, amount)
        self._hold(key, reservation.id, amount, self._clock() + ttl)
        return reservation

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        check_reservation(0, ttl)
        key = (reservation.tenant, reservation.day)
        self._prune()  # first: an expired hold is not brought back
        held = self._held.get(key, {})
        live = held.get(reservation.id)
        if live is None:
            return False
        expiry = self._clock() + ttl
        held[reservation.id] = (live[0], expiry)
        heapq.heappush(self._expiries, (expiry, key, reservation.id))
        return True

    def _drop(self, reservation: Reservation) -> None:
        self._drop_held((reservation.tenant, reservation.day), reservation.id)

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        self._drop(reservation)
        self._add((reservation.tenant, reservation.day), cost)

    async def release(self, reservation: Reservation) -> None:
        self._drop(reservation)

    def add_now(self, entries: Sequence[Entry]) -> list[Entry]:
        """add() without awaiting; returns the entries booked (not those a `once` id refused)."""
        for _, day, _, _ in entries:
            day_end(day)  # all checked before any is added, as the Redis pipeline is built first
        booked: list[Entry] = []
        for entry in entries:
            tenant, day, cost, once = entry
            if not cost or (once is not None and not self._first_booking(tenant, once)):
                continue
            self._add((tenant, day), cost)
            booked.append(entry)
        return booked

    async def add(self, entries: Sequence[Entry]) -> None:
        self.add_now(entries)

    async def spend(self, tenant: str, day: str) -> Spend:
        day_end(day)
        key = (tenant, day)
        return Spend(day, dict(self._spent.get(key, {})), self._reserved(key))

    async def close(self) -> None:
        self._spent.clear()
        self._held.clear()
        self._held_total.clear()
        self._expiries.clear()
        self._once.clear()
