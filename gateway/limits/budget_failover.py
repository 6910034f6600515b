"""What handlers use: the shared spend ledger when it answers, the tenant's failure mode when not,
and the spend booked meanwhile replayed to the shared ledger once it answers again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateway.errors import BackendError
from gateway.limits.base import FailureMode
from gateway.limits.budget import Cost, Entry, Hold, Ledger, MemoryLedger, Reservation, Spend
from gateway.limits.failover import Degradable

log = logging.getLogger(__name__)

_Unsynced = dict[tuple[str, str], dict[str, int]]
"""(tenant, day) -> part -> µ$ booked in the local ledger and not yet in the primary."""


class FailoverLedger(Degradable):
    """The primary ledger when it answers, the tenant's failure mode when not.

    On BackendError, charge and reserve follow `mode` (base.FailureMode):
      local   this instance's ledger, from the last figure the primary gave for that tenant and
              day (spent + held, which every reply carries), with what is left of the cap
              divided by the live instances: with n instances that each saw S, together they
              admit at most S + (cap - S) = cap; the bound, and its slack, in policies/README.md;
      open    admit, recorded in this instance's ledger without a cap;
      closed  refuse.
    commit, release and add never raise BackendError: they run after the money is spent (often
    in a `finally`), so a failed write is kept in the local ledger and logged once per streak.

    What the local ledger books in place of the primary (admitted charges, commits, adds) is also
    kept as unsynced, and replayed to the primary in one add() by the first call it answers
    afterwards (or with the next add()), so the shared figure, the report and every instance's
    cap see it. The window: until then it lives in this process only, so a crash, or an exit
    while the primary is still down (close() tries once more), loses what this instance booked
    during the outage. A write that timed out may have landed all the same: booked here too and
    replayed, it counts twice (at worst, and erring towards stopping spend). The local ledger
    keeps what it booked, as this instance's share of the cap in the next outage of the day.
    """

    def __init__(self, primary: Ledger, local: MemoryLedger, instances: Callable[[], int] = lambda: 1) -> None:
        super().__init__()
        self._primary = primary
        # An in-process primary never fails and never waits: charge it without a coroutine.
        self._sync_primary = primary if isinstance(primary, MemoryLedger) else None
        self._local = local
        self._instances = instances
        self._writes_failing = False
        self._unsynced: _Unsynced = {}
        # (tenant, day) -> (the primary's last total, the local ledger's total at that moment):
        # what the local ledger books from then on is on top of the primary's figure.
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._seen_day = ""
        self._replaying: asyncio.Task[None] | None = None
        primary.on_total(self.saw)

    @property
    def primary(self) -> Ledger:
        return self._primary

    @property
    def shared(self) -> bool:
        """Is the primary a shared store (its calls are I/O worth a span)?"""
        return self._sync_primary is None

    @property
    def local(self) -> MemoryLedger:
        return self._local

    @property
    def needs_answer(self) -> bool:
        """Would answered() do anything (degraded, or spend booked here to replay)? Asked per
        webhook, so the healthy path awaits nothing."""
        return self.degraded or bool(self._unsynced)

    @property
    def unsynced(self) -> int:
        """µ$ booked here while the primary failed and not yet replayed to it."""
        return sum(sum(parts.values()) for parts in self._unsynced.values())

    def on_total(self, callback: Callable[[str, str, int], None]) -> None:
        """The primary's totals, as it reports them."""
        self._primary.on_total(callback)

    def saw(self, tenant: str, day: str, total: int) -> None:
        """The primary's figure for a tenant-day (its replies carry it; a webhook's combined
        charge brings it through the limiter)."""
        if day != self._seen_day:
            if day < self._seen_day:
                return  # a reply about a past day (a call's end booked after midnight): not needed
            # Once a day: yesterday's figures are no use to today's caps.
            self._seen_day = day
            self._seen = {key: seen for key, seen in self._seen.items() if key[1] == day}
        self._seen[(tenant, day)] = (total, self._local.total_now(tenant, day))

    def last_seen(self, tenant: str, day: str) -> int | None:
        """The primary's last figure (µ$ spent + held) for tenant and day, if one came."""
        seen = self._seen.get((tenant, day))
        return None if seen is None else seen[0]

    def _local_cap(self, tenant: str, day: str, cap: int | None) -> int | None:
        """The cap the local ledger checks in `local` mode: its own total when the primary last
        answered, plus this instance's share of what the primary said was left."""
        if cap is None:
            return None
        seen, base = self._seen.get((tenant, day), (0, 0))
        return base + max(0, cap - seen) // max(1, self._instances())

    def charge_now(self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None) -> bool | None:
        """The answer at once when the primary is in process, else None: await charge()."""
        if self._sync_primary is None:
            return None
        return self._sync_primary.charge_now(tenant, day, cost, cap, hold)

    async def charge(
        self, tenant: str, day: str, cost: Cost, cap: int | None, hold: Hold | None = None, mode: FailureMode = "local"
    ) -> bool:
        try:
            admitted = await self._primary.charge(tenant, day, cost, cap, hold)
        except BackendError as error:
            return self.fallback_now(tenant, day, cost, cap, mode, hold, error)
        await self.answered()
        return admitted

    def fallback_now(
        self,
        tenant: str,
        day: str,
        cost: Cost,
        cap: int | None,
        mode: FailureMode,
        hold: Hold | None,
        error: BackendError | None,
    ) -> bool:
        """A charge the primary could not take (`error`), decided by `mode` in this process."""
        # A charge that timed out may have run on the primary all the same; booked here too,
        # and replayed, it then counts twice. Only at worst, and erring towards stopping spend,
        # which is what a cap is for; telling the cases apart would need an id per webhook and
        # a round trip to ask.
        if error is not None:
            self._set_degraded(True, error)
        if mode == "closed":
            return False
        local_cap = self._local_cap(tenant, day, cap) if mode == "local" else None
        admitted = self._local.charge_now(tenant, day, cost, local_cap, hold)
        if admitted:
            self._keep(tenant, day, cost)
        return admitted

    async def reserve(
        self,
        tenant: str,
        day: str,
        amount: int,
        cap: int | None,
        ttl: float,
        mode: FailureMode = "local",
        *,
        id: str | None = None,
    ) -> Reservation | None:
        try:
            reservation = await self._primary.reserve(tenant, day, amount, cap, ttl, id=id)
        except BackendError as error:
            self._set_degraded(True, error)
            if mode == "closed":
                return None
            # Held here under the same id: its settling on this instance goes here (local=True);
            # settled from another instance (rebuilt, not local), the hold here lapses at its ttl.
            local_cap = self._local_cap(tenant, day, cap) if mode == "local" else None
            held = await self._local.reserve(tenant, day, amount, local_cap, ttl, id=id)
            return None if held is None else replace(held, local=True)
        await self.answered()
        return reservation

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        if reservation.local:
            return await self._local.extend(reservation, ttl)
        try:
            kept = await self._primary.extend(reservation, ttl)
        except BackendError as error:
            # Raised, not False: the hold may well be live, and its holder tries again at its next
            # beat (within the ttl, or it lapses and stops counting; nothing is spent either way).
            self._set_degraded(True, error)
            raise
        await self.answered(wrote=True)
        return kept

    async def commit(self, reservation: Reservation, cost: Cost) -> None:
        if reservation.local:
            await self._local.commit(reservation, cost)
            self._keep(reservation.tenant, reservation.day, cost)
            return
        try:
            await self._primary.commit(reservation, cost)
        except BackendError as error:
            # The shared hold expires at its ttl; the cost is kept here (and replayed), not lost.
            self._write_failed(error, f"commit of reservation {reservation.id} of {reservation.tenant}")
            self._book_locally([(reservation.tenant, reservation.day, cost, None)])
            return
        await self.answered(wrote=True)

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
        await self.answered(wrote=True)

    async def add(self, entries: Sequence[Entry]) -> None:
        """The entries, and whatever is unsynced, in one add() to the primary; on failure the
        entries are booked here (a `once` id is then checked against this instance's ids only)."""
        pending = self._take_unsynced()
        try:
            await self._primary.add([*entries, *_entries(pending)])
        except BackendError as error:
            self._restore(pending)
            self._write_failed(error, f"add of {len(entries)} entries")
            self._book_locally(entries)
            return
        except BaseException:
            # Cancelled, or a malformed day: the replay did not (knowingly) happen; keep it.
            self._restore(pending)
            raise
        self._write_succeeded()
        self._replayed(pending)
        if self._unsynced:  # booked here by a call that failed while this add was in flight
            await self._resync()

    async def spend(self, tenant: str, day: str) -> Spend:
        """The primary's figure; BackendError when it fails, since this instance's share is
        not the day's spend and a report must not pass it off as such."""
        if self._unsynced:
            # Replayed first, so that the figure read includes them.
            await self._resync()
        try:
            spent = await self._primary.spend(tenant, day)
        except BackendError as error:
            self._set_degraded(True, error)
            raise
        await self.answered()
        return spent

    def replay_soon(self) -> None:
        """Replay what is unsynced in a task of its own (the heartbeat found the primary back)."""
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.get_running_loop().create_task(self._resync())

    def take_unsynced(self, tenant: str, day: str) -> dict[str, int] | None:
        """What was booked here for one tenant-day and not yet replayed, taken to ride with that
        tenant's next charge (BudgetCharge.replay); give it back with `keep_unsynced` if the
        charge did not reach the primary, or tell `replayed_with_charge` if it did."""
        if not self._unsynced:
            return None
        return self._unsynced.pop((tenant, day), None)

    def keep_unsynced(self, tenant: str, day: str, parts: Cost) -> None:
        self._keep(tenant, day, parts)

    def replayed_with_charge(self, tenant: str, day: str, parts: Cost) -> None:
        self._replayed({(tenant, day): dict(parts)})

    def _keep(self, tenant: str, day: str, cost: Cost) -> None:
        parts = self._unsynced.setdefault((tenant, day), {})
        for part, amount in cost.items():
            parts[part] = parts.get(part, 0) + amount

    def _book_locally(self, entries: Sequence[Entry]) -> None:
        for tenant, day, cost, _ in self._local.add_now(entries):
            self._keep(tenant, day, cost)

    def _take_unsynced(self) -> _Unsynced:
        # Taken before the await: a concurrent call that finds the primary back must not
        # replay the same amounts again.
        pending, self._unsynced = self._unsynced, {}
        return pending

    def _restore(self, pending: _Unsynced) -> None:
        for (tenant, day), parts in pending.items():
            self._keep(tenant, day, parts)

    async def _resync(self) -> None:
        """Replay the unsynced amounts to the primary; on failure they stay unsynced."""
        pending = self._take_unsynced()
        if not pending:
            return
        try:
            await self._primary.add(_entries(pending))
        except BackendError as error:
            # As with a charge: a replay that timed out may have landed, and is then counted twice.
            self._restore(pending)
            self._write_failed(error, "replay of the spend booked during the outage")
            return
        except BaseException:
            self._restore(pending)
            raise
        self._write_succeeded()
        self._replayed(pending)

    def _replayed(self, pending: _Unsynced) -> None:
        if pending:
            for key, parts in pending.items():
                # The primary holds them now: its figure seen last counts them (the local ledger's
                # base counted them already), or the next outage would spend them again.
                seen = self._seen.get(key)
                if seen is not None:
                    self._seen[key] = (seen[0] + sum(parts.values()), seen[1])
            total = sum(sum(parts.values()) for parts in pending.values())
            log.info("spend ledger: replayed %d µ$ over %d tenant-days booked here meanwhile", total, len(pending))

    async def answered(self, *, wrote: bool = False) -> None:
        """The primary answered: it is back, so replay what was booked here meanwhile.

        The first call to find it back pays the replay's round trip (one add()).
        """
        if wrote:
            self._write_succeeded()
        else:
            self._set_degraded(False)
        if self._unsynced:
            await self._resync()

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

    async def close(self) -> None:
        """Replay what is unsynced one last time (what fails now is lost), then close both."""
        if self._replaying is not None:
            await asyncio.gather(self._replaying, return_exceptions=True)
        if self._unsynced:
            await self._resync()
            if self._unsynced:
                log.warning("spend ledger: %d µ$ booked here while the shared ledger failed is lost", self.unsynced)
        await self._primary.close()
        await self._local.close()


def _entries(unsynced: _Unsynced) -> list[Entry]:
    # No `once` id: the ids were checked here when the amounts were booked. The primary never
    # learns them, so a replay of such a callback after the outage books there once more (once
    # only: that booking records the id).
    return [(tenant, day, parts, None) for (tenant, day), parts in unsynced.items()]
