"""The spend ledger shared by every instance: redis_budget.lua does each step atomically, next to
the data (see budget.py for the Ledger contract)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.clock import Clock
from gateway.errors import BackendError
from gateway.limits.breaker import CircuitBreaker, State
from gateway.limits.budget import (
    ONCE_TTL,
    Cost,
    Entry,
    Hold,
    Reservation,
    Spend,
    check_reservation,
    day_end,
    expire_at,
    new_reservation_id,
)
from gateway.limits.redis_client import CircuitOpen, RedisClient, gate_of, guard, is_noscript, lua, now_arg

BUDGET_SCRIPT = "redis_budget.lua"
LEDGER_LIBRARY = "redis_ledger.lua"  # the steps redis_bucket.lua shares

_Call = tuple[list[str], list[str | int]]
"""One EVALSHA of the script: (keys, args)."""

TotalSeen = Callable[[str, str, int], None]
"""Told (tenant, day, µ$ spent + held) after every step that read or changed that figure."""


def spent_key(tenant: str, day: str) -> str:
    # The hash tag {tenant} puts a tenant's keys in one Cluster slot, as the script needs.
    return f"sy:{{{tenant}}}:$:{day}"


def held_key(tenant: str, day: str) -> str:
    # $h, not the $r of the layout before issue 17 (members '<id>:<amount>'): holds made by an
    # older version are not read as this one's; they lapse with their day's keys.
    return f"sy:{{{tenant}}}:$h:{day}"


def amounts_key(tenant: str, day: str) -> str:
    return f"sy:{{{tenant}}}:$ha:{day}"


def once_key(tenant: str, once: str) -> str:
    # Per tenant, not per day: the id is kept past midnight (budget.ONCE_TTL).
    return f"sy:{{{tenant}}}:$once:{once}"


def hold_args(hold: Hold | None) -> list[str | int]:
    """A charge's hold as the scripts take it: id ('' = none), µ$, ttl (s)."""
    if hold is None:
        return ["", 0, "0"]
    check_reservation(hold.amount, hold.ttl)
    return [hold.id, hold.amount, repr(hold.ttl)]


def ledger_keys(tenant: str, day: str) -> list[str]:
    """The keys of a tenant-day, as redis_ledger.lua takes them: spent, holds, amounts."""
    return [spent_key(tenant, day), held_key(tenant, day), amounts_key(tenant, day)]


def _flat(cost: Cost) -> list[str | int]:
    args: list[str | int] = []
    for part, amount in cost.items():
        args += [part, amount]
    return args


class RedisLedger:
    """The ledger shared by every instance, over one Redis or Redis Cluster client (the caller's).

    clock: None in production (the script reads Redis TIME for reservation expiry: one clock for
    all instances); tests inject one. `once` ids expire on Redis's own clock either way.
    breaker: the limiter's, to share its verdict on this Redis: while it is open a charge fails
    at once instead of waiting out the deadline per webhook.
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
        self._gate = gate_of(client)
        self._clock = clock
        self._deadline = deadline
        self._breaker = breaker
        self._script = client.register_script(lua(LEDGER_LIBRARY, BUDGET_SCRIPT))
        self._watchers: list[TotalSeen] = []

    def on_total(self, callback: TotalSeen) -> None:
        """Call `callback` with each tenant-day total a reply carries (FailoverLedger keeps the
        last one, to start from it should Redis fail)."""
        self._watchers.append(callback)

    def _saw(self, tenant: str, day: str, total: Any) -> None:
        figure = int(total)
        for callback in self._watchers:
            callback(tenant, day, figure)

    def _now(self) -> str:
        return now_arg(None if self._clock is None else self._clock())

    def _allow(self, operation: str) -> None:
        if self._breaker is not None and not self._breaker.allow():
            raise BackendError("redis", operation, CircuitOpen("circuit breaker is open"))

    def _record(self, error: BaseException | None) -> None:
        if self._breaker is None:
            return
        if error is None:
            self._breaker.record_success()
        elif (isinstance(error, BackendError) and not error.overloaded) or self._breaker.state is State.HALF_OPEN:
            # A queue at the gate is back-pressure, not the store failing. A probe cancelled by
            # its caller (or given up at the gate) counts as failed: a half-open breaker would
            # otherwise wait for its verdict for ever.
            self._breaker.record_failure()

    async def _run(self, operation: str, tenant: str, day: str, *args: str | int) -> Any:
        name = f"ledger {operation}"
        expiry = expire_at(day)  # a malformed day fails here, before the breaker hears of the call
        keys = ledger_keys(tenant, day)
        now = self._now()
        self._allow(name)
        try:
            async with guard(name, self._deadline, self._gate):
                reply = await self._script(keys=keys, args=[now, operation, expiry, *args], client=self._client)
        except BaseException as error:
            self._record(error)
            raise
        self._record(None)
        return reply

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> None:
        """Always None: a shared store answers only after a round trip."""
        return None

    async def charge(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool:
        cap_arg = "" if cap is None else cap
        args = hold_args(hold)
        admitted, total = await self._run("charge", tenant, day, cap_arg, *args, *_flat(cost))
        self._saw(tenant, day, total)
        return int(admitted) == 1

    async def reserve(
        self, tenant: str, day: str, amount: int, cap: int | None, ttl: float, *, id: str | None = None
    ) -> Reservation | None:
        check_reservation(amount, ttl)
        reservation = Reservation(tenant, day, new_reservation_id() if id is None else id, amount)
        cap_arg = "" if cap is None else cap
        # '' tells the script not to look for a live hold of this id: a new random id has none.
        named = "" if id is None else "1"
        reply, total = await self._run("reserve", tenant, day, cap_arg, reservation.id, amount, repr(ttl), named)
        self._saw(tenant, day, total)
        held = int(reply)
        if held < 0:
            return None
        # A live hold of this id may hold another amount: settling it needs that one.
        return reservation if held == amount else replace(reservation, amount=held)

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        check_reservation(0, ttl)
        return int(await self._run("extend", reservation.tenant, reservation.day, reservation.id, repr(ttl))) == 1

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        tenant, day = reservation.tenant, reservation.day
        _, total = await self._run("commit", tenant, day, reservation.id, *_flat(cost))
        self._saw(tenant, day, total)

    async def release(self, reservation: Reservation) -> None:
        tenant, day = reservation.tenant, reservation.day
        _, total = await self._run("release", tenant, day, reservation.id)
        self._saw(tenant, day, total)

    async def add(self, entries: Sequence[Entry]) -> None:
        # Entries without an id are summed per key and part: a burst of status callbacks for one
        # tenant is one HINCRBY. Each entry with an id is one script call (the id and the add in
        # one atomic step), in the same pipeline.
        totals: dict[tuple[str, str], dict[str, int]] = {}
        once_calls: list[_Call] = []
        now = self._now()
        for tenant, day, cost, once in entries:
            day_end(day)  # all checked before anything is sent
            if not cost:
                continue
            if once is not None:
                keys = [spent_key(tenant, day), held_key(tenant, day), amounts_key(tenant, day), once_key(tenant, once)]
                once_calls.append((keys, [now, "once", expire_at(day), ONCE_TTL, *_flat(cost)]))
                continue
            parts = totals.setdefault((tenant, day), {})
            for part, amount in cost.items():
                parts[part] = parts.get(part, 0) + amount
        if not totals and not once_calls:
            return
        self._allow("ledger add")
        try:
            async with guard("ledger add", self._deadline, self._gate):
                replies = await self._pipeline(totals, once_calls)
                first_script = len(replies) - len(once_calls)
                lost = [i for i, reply in enumerate(replies[first_script:]) if is_noscript(reply)]
                if lost:
                    # A restarted server has no scripts; NOSCRIPT means that call did nothing, so
                    # resend only those (the HINCRBYs took effect).
                    self._script.sha = await self._client.script_load(self._script.script)
                    again = await self._pipeline({}, [once_calls[i] for i in lost])
                    for i, reply in zip(lost, again, strict=True):
                        replies[first_script + i] = reply
            failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
            if failed is not None:
                raise BackendError("redis", "ledger add", failed)
        except BaseException as error:
            self._record(error)
            raise
        self._record(None)

    async def _pipeline(self, totals: dict[tuple[str, str], dict[str, int]], calls: Sequence[_Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for (tenant, day), parts in totals.items():
            key = spent_key(tenant, day)
            for part, amount in parts.items():
                pipe.hincrby(key, part, amount)
            pipe.expireat(key, expire_at(day))
        for keys, args in calls:
            # Not pipe.evalsha(): redis-py's cluster pipeline refuses that method, though it
            # routes the command itself by its keys (all in the tenant's slot) just fine.
            pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def spend(self, tenant: str, day: str) -> Spend:
        flat, reserved = await self._run("spend", tenant, day)
        parts = {
            flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i]): int(flat[i + 1])
            for i in range(0, len(flat), 2)
        }
        spend = Spend(day, parts, int(reserved))
        self._saw(tenant, day, spend.total + spend.reserved)
        return spend

    async def close(self) -> None:
        """Nothing to release: the client belongs to whoever made it."""
