"""What handlers use: the shared spend ledger when it answers, the tenant's failure mode when not,
and the spend booked meanwhile replayed to the shared ledger once it answers again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
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
      local   this instance's ledger, within its share of what the primary last said was left
              of the cap (its replies carry the tenant-day's spent + held, S): what it booked
              and has not yet replayed, plus its holds not yet moved to the primary, stays
              within (cap - S) / n; with n instances that each saw S, together they book at
              most cap - S. The bound, and its slack, in policies/README.md;
      open    admit, recorded in this instance's ledger without a cap;
      closed  refuse a charge; a reserve raises the BackendError (its caller says "unavailable",
              which is not "over budget": 503, not 429, to an API client).
    commit, release and add never raise BackendError: they run after the money is spent (often
    in a `finally`), so a failed write is kept in the local ledger and logged once per streak.

    What the local ledger books in place of the primary (admitted charges, commits, adds) is also
    kept as unsynced, and replayed to the primary in one add() by the first call it answers
    afterwards (or with the next add(), or the tenant's next webhook, or the heartbeat), so the
    shared figure, the report and every instance's cap see it. The holds made here move to the
    primary too, under their ids and for what is left of their ttl (in a task: one round trip
    each), so that other instances count them; whichever instance settles a hold settles it on
    the primary and drops it here. The window: until then it lives in this process only, so a
    crash, or an exit while the primary is still down (close() tries once more), loses what this
    instance booked during the outage. A write that timed out may have landed all the same:
    booked here too and replayed, it counts twice (at worst, and erring towards stopping spend).
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
        # (tenant, day) -> µ$ taken from _unsynced by a replay in flight: still not in the
        # figure seen, so still counted against this instance's share until it lands.
        self._sending: dict[tuple[str, str], int] = {}
        # (tenant, day) -> the primary's last total (spent + held).
        self._seen: dict[tuple[str, str], int] = {}
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
        return self.degraded or bool(self._unsynced) or self._local.holding

    @property
    def unsynced(self) -> int:
        """µ$ booked here while the primary failed and not yet replayed to it (nor on its way)."""
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
        self._seen[(tenant, day)] = total

    def last_seen(self, tenant: str, day: str) -> int | None:
        """The primary's last figure (µ$ spent + held) for tenant and day, if one came."""
        return self._seen.get((tenant, day))

    def _fits_locally(self, tenant: str, day: str, amount: int, cap: int | None) -> bool:
        """`local` mode: does `amount` more stay within this instance's share of what the primary
        last said was left? Counted against the share: what this instance booked that the
        primary has not had (unsynced, or on its way) and its holds not yet moved there; not the
        local ledger's own total, part of which the primary has had since (a replay), so the
        next outage of the day would spend it twice (and admit nothing)."""
        if cap is None:
            return True
        key = (tenant, day)
        unsynced = self._unsynced.get(key)
        pending = (sum(unsynced.values()) if unsynced else 0) + self._sending.get(key, 0)
        pending += self._local.held_now(tenant, day)
        share = max(0, cap - self._seen.get(key, 0)) // max(1, self._instances())
        return pending + amount <= share

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
        if mode == "local":
            held = hold.amount if hold is not None and not self._local.holds(tenant, day, hold.id) else 0
            if not self._fits_locally(tenant, day, sum(cost.values()) + held, cap):
                return False
        self._local.charge_now(tenant, day, cost, None, hold)
        self._keep(tenant, day, cost)
        return True

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
                raise
            # Held here under the same id, and moved to the primary once it answers. A live hold
            # of that id here is the answer as held (a retry), with no second check.
            live = id is not None and self._local.holds(tenant, day, id)
            if not live and mode == "local" and not self._fits_locally(tenant, day, amount, cap):
                return None
            held = await self._local.reserve(tenant, day, amount, None, ttl, id=id)
            return None if held is None else replace(held, local=True)
        await self.answered()
        return reservation

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        if self._local.holds(reservation.tenant, reservation.day, reservation.id):
            return await self._local.extend(reservation, ttl)  # not moved to the primary yet
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
        # Settled on the primary whether it was held there or here (a hold made here during an
        # outage may have moved there since; if not, the primary just books the cost), and
        # dropped here by its id, whichever instance made it and whether or not the primary
        # answers: a hold settled must stop counting against this instance's share too.
        await self._local.release(reservation)
        try:
            await self._primary.commit(replace(reservation, local=False), cost)
        except BackendError as error:
            # A shared hold expires at its ttl; the cost is kept here (and replayed), not lost.
            self._write_failed(error, f"commit of reservation {reservation.id} of {reservation.tenant}")
            self._book_locally([(reservation.tenant, reservation.day, cost, None)])
            return
        await self.answered(wrote=True)

    async def release(self, reservation: Reservation) -> None:
        await self._local.release(reservation)
        reservation = replace(reservation, local=False)
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
        self._send(pending, -1)
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
        """Replay what is unsynced, and move the holds made here to the primary, in a task of
        its own (the heartbeat found the primary back, or a call found holds to move)."""
        if self._replaying is None or self._replaying.done():
            self._replaying = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        await self._resync()
        if not self._unsynced:
            await self._move_holds()

    async def _move_holds(self) -> None:
        """The live holds made here during an outage, held on the primary under the same ids for
        what is left of their ttl (no cap: they were admitted), then dropped here. Until then
        the other instances do not count them: the slack is the holds made in the outage."""
        for tenant, day, id, amount, ttl in self._local.live_holds():
            held = Reservation(tenant, day, id, amount)
            try:
                await self._primary.reserve(tenant, day, amount, None, ttl, id=id)
            except BackendError as error:
                self._write_failed(error, f"move of the holds made here ({id} of {tenant})")
                return
            if self._local.holds(tenant, day, id):
                await self._local.release(held)
            else:
                # Settled here while it moved (the settling found no hold on the primary): the
                # copy just made must not count until its ttl.
                try:
                    await self._primary.release(held)
                except BackendError as error:
                    self._write_failed(error, f"release of moved hold {id} of {tenant}")
                    return
        self._write_succeeded()

    def take_unsynced(self, tenant: str, day: str) -> dict[str, int] | None:
        """What was booked here for one tenant-day and not yet replayed, taken to ride with that
        tenant's next charge (BudgetCharge.replay); give it back with `keep_unsynced` if the
        charge did not reach the primary, or tell `replayed_with_charge` if it did."""
        if not self._unsynced:
            return None
        taken = self._unsynced.pop((tenant, day), None)
        if taken:
            self._send({(tenant, day): taken}, 1)
        return taken

    def keep_unsynced(self, tenant: str, day: str, parts: Cost) -> None:
        self._send({(tenant, day): parts}, -1)
        self._keep(tenant, day, parts)

    def replayed_with_charge(self, tenant: str, day: str, parts: Cost) -> None:
        self._send({(tenant, day): parts}, -1)
        self._replayed({(tenant, day): dict(parts)})

    def _send(self, pending: Mapping[tuple[str, str], Cost], sign: int) -> None:
        for key, parts in pending.items():
            amount = self._sending.get(key, 0) + sign * sum(parts.values())
            if amount:
                self._sending[key] = amount
            else:
                self._sending.pop(key, None)

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
        self._send(pending, 1)
        return pending

    def _restore(self, pending: _Unsynced) -> None:
        self._send(pending, -1)
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
        self._send(pending, -1)
        self._replayed(pending)

    def _replayed(self, pending: _Unsynced) -> None:
        if pending:
            for key, parts in pending.items():
                # The primary has them now, so its figure does (no longer counted as pending
                # here). An add() reports no total: the last one seen is raised by them. A
                # charge's reply, which counts them, is seen right after and replaces it.
                seen = self._seen.get(key)
                if seen is not None:
                    self._seen[key] = seen + sum(parts.values())
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
        if self._local.holding:
            self.replay_soon()  # one round trip per hold: not in this caller's time

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
