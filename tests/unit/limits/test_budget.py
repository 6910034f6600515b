"""FailoverLedger's answers when the shared ledger fails and its replay once it is back, the
in-process ledger's own rules, and utc_day."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import pytest

from gateway.errors import BackendError
from gateway.limits.base import FailureMode
from gateway.limits.budget import (
    ONCE_TTL,
    RETENTION_DAYS,
    Entry,
    Hold,
    Ledger,
    MemoryLedger,
    Reservation,
    Spend,
    day_end,
    expire_at,
    utc_day,
)
from gateway.limits.budget_failover import FailoverLedger
from tests.support.clock import FakeClock

DAY = "2024-05-01"
CAP = 1_000_000
TTL = 30.0


class FlakyLedger:
    """A shared ledger that fails while `down` is set (or the op is in `failing`), else answers
    from a MemoryLedger of its own, recording calls and what each add() was given."""

    def __init__(self, clock: FakeClock) -> None:
        self.store = MemoryLedger(clock)
        self.down = False
        self.failing: set[str] = set()
        self.calls: list[str] = []
        self.added: list[list[Entry]] = []
        # Set: add() waits for `resume` after setting `entered`, so a test can race a call past it.
        self.entered: asyncio.Event | None = None
        self.resume: asyncio.Event | None = None
        self.closed = False
        self.watchers: list[Callable[[str, str, int], None]] = []

    def on_total(self, callback: Callable[[str, str, int], None]) -> None:
        self.watchers.append(callback)

    def _told(self, tenant: str, day: str) -> None:
        # As RedisLedger: every answered step reports the tenant-day's spent + held.
        for callback in self.watchers:
            callback(tenant, day, self.store.total_now(tenant, day))

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down or name in self.failing:
            raise BackendError("redis", f"ledger {name}", ConnectionError("refused"))

    def charge_now(
        self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None, hold: Hold | None = None
    ) -> bool | None:
        return None

    async def charge(
        self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None, hold: Hold | None = None
    ) -> bool:
        self._call("charge")
        admitted = await self.store.charge(tenant, day, cost, cap, hold)
        self._told(tenant, day)
        return admitted

    async def reserve(
        self, tenant: str, day: str, amount: int, cap: int | None, ttl: float, *, id: str | None = None
    ) -> Reservation | None:
        self._call("reserve")
        held = await self.store.reserve(tenant, day, amount, cap, ttl, id=id)
        self._told(tenant, day)
        return held

    async def extend(self, reservation: Reservation, ttl: float) -> bool:
        self._call("extend")
        return await self.store.extend(reservation, ttl)

    async def commit(self, reservation: Reservation, cost: Mapping[str, int]) -> None:
        self._call("commit")
        await self.store.commit(reservation, cost)
        self._told(reservation.tenant, reservation.day)

    async def release(self, reservation: Reservation) -> None:
        self._call("release")
        await self.store.release(reservation)
        self._told(reservation.tenant, reservation.day)

    async def add(self, entries: Sequence[Entry]) -> None:
        self._call("add")
        self.added.append(list(entries))
        if self.entered is not None and self.resume is not None:
            self.entered.set()
            await self.resume.wait()
        await self.store.add(entries)

    async def spend(self, tenant: str, day: str) -> Spend:
        self._call("spend")
        return await self.store.spend(tenant, day)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def primary(clock: FakeClock) -> FlakyLedger:
    """A shared ledger the test can take down and bring back."""
    return FlakyLedger(clock)


@pytest.fixture
def local(clock: FakeClock) -> MemoryLedger:
    """This instance's ledger, on the test's clock."""
    return MemoryLedger(clock)


@pytest.mark.parametrize(
    ("epoch", "day"),
    [
        (0.0, "1970-01-01"),
        (86_399.999, "1970-01-01"),
        (86_400.0, "1970-01-02"),
        (1_709_251_199.5, "2024-02-29"),
        (1_709_251_200.0, "2024-03-01"),
        (1_735_689_599.0, "2024-12-31"),
    ],
    ids=["epoch", "last-instant", "next-day", "leap-day", "after-leap-day", "new-years-eve"],
)
def test_utc_day(epoch: float, day: str) -> None:
    """utc_day() is the UTC calendar date, whatever the local timezone."""
    assert utc_day(epoch) == day


def test_day_end_and_expiry() -> None:
    """A day ends at the next UTC midnight; its keys go RETENTION_DAYS later."""
    assert day_end("1970-01-01") == 86_400
    assert day_end("2024-02-29") == 1_709_251_200
    assert expire_at("2024-02-29") == 1_709_251_200 + RETENTION_DAYS * 86_400


def test_spend_total_sums_the_parts() -> None:
    """Spend.total is every part together; reservations are apart."""
    assert Spend(DAY, {"voice": 8_500, "sms": 7_900}, reserved=1_000).total == 16_400
    assert Spend(DAY, {}, 0).total == 0


@pytest.mark.parametrize(("amount", "ttl"), [(-1, TTL), (1, 0.0), (1, -5.0)], ids=["negative", "no-ttl", "past"])
async def test_reserve_refuses_nonsense(local: MemoryLedger, amount: int, ttl: float) -> None:
    """A negative hold or one that expires at once is a caller's bug, not a refusal."""
    with pytest.raises(ValueError, match="reserve"):
        await local.reserve("acme", DAY, amount, CAP, ttl)


async def test_memory_forgets_days_past_retention(local: MemoryLedger) -> None:
    """Writing a new day drops days more than RETENTION_DAYS before it, as Redis expires them."""
    await local.add([("acme", "2024-05-01", {"voice": 1}, None), ("acme", "2024-05-02", {"voice": 2}, None)])
    assert await local.reserve("acme", "2024-05-01", 5, None, TTL) is not None
    await local.add([("beta", "2024-05-10", {"sms": 3}, None)])  # 2024-05-02 is exactly RETENTION_DAYS before
    assert (await local.spend("acme", "2024-05-01")) == Spend("2024-05-01", {}, 0)
    assert (await local.spend("acme", "2024-05-02")).parts == {"voice": 2}
    assert (await local.spend("beta", "2024-05-10")).parts == {"sms": 3}


async def test_healthy_primary_answers(primary: FlakyLedger, local: MemoryLedger) -> None:
    """While the primary answers, its answers are returned and the local ledger is untouched."""
    ledger = FailoverLedger(primary, local)
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="closed")
    reservation = await ledger.reserve("acme", DAY, 5, CAP, TTL, mode="closed", id="llm:1")
    assert reservation == Reservation("acme", DAY, "llm:1", 5)
    await ledger.commit(reservation, {"llm": 4})
    await ledger.release(reservation)
    await ledger.add([("acme", DAY, {"voice": 1}, "call:CA1")])
    assert (await ledger.spend("acme", DAY)).parts == {"webhook": 1, "llm": 4, "voice": 1}
    assert primary.calls == ["charge", "reserve", "commit", "release", "add", "spend"]
    assert (await local.spend("acme", DAY)) == Spend(DAY, {}, 0)
    assert not ledger.degraded and ledger.unsynced == 0


@pytest.mark.parametrize(
    ("mode", "admitted", "local_total"),
    [
        ("local", [True, True, False], 500_000),  # half the cap: 2 instances live
        ("open", [True, True, True], 750_000),
        ("closed", [False, False, False], 0),
    ],
    ids=["local", "open", "closed"],
)
async def test_charge_follows_the_mode(
    primary: FlakyLedger, local: MemoryLedger, mode: FailureMode, admitted: list[bool], local_total: int
) -> None:
    """Primary down: local charges this instance's share of the cap, open admits (recorded here), closed refuses."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 2)
    answers = [await ledger.charge("acme", DAY, {"llm": 250_000}, 1_000_000, mode=mode) for _ in range(3)]
    assert answers == admitted
    assert (await local.spend("acme", DAY)).total == local_total
    assert ledger.degraded


async def test_local_mode_starts_from_the_last_spend_the_primary_reported(
    primary: FlakyLedger, local: MemoryLedger
) -> None:
    """Primary down after it said 600,000 of 1,000,000 were spent: with two instances this one
    admits half of the 400,000 left, not half the cap (which would overspend by 100 %)."""
    ledger = FailoverLedger(primary, local, instances=lambda: 2)
    assert await ledger.charge("acme", DAY, {"llm": 600_000}, CAP)
    assert ledger.last_seen("acme", DAY) == 600_000
    primary.down = True
    answers = [await ledger.charge("acme", DAY, {"webhook": 50_000}, CAP) for _ in range(5)]
    assert answers == [True] * 4 + [False]
    assert ledger.unsynced == 200_000
    # Back: the replay lands, and the figure seen next counts it (the next outage starts there).
    primary.down = False
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert ledger.last_seen("acme", DAY) == 800_001


async def test_two_instances_failing_over_together_stay_within_the_cap(clock: FakeClock) -> None:
    """Two instances on one primary, both failing over after seeing the same figure: together
    they admit exactly what was left, so the day ends at the cap."""
    shared = FlakyLedger(clock)
    first = FailoverLedger(shared, MemoryLedger(clock), instances=lambda: 2)
    second = FailoverLedger(shared, MemoryLedger(clock), instances=lambda: 2)
    assert await first.charge("acme", DAY, {"webhook": 700_000}, CAP)
    assert await second.charge("acme", DAY, {"webhook": 100_000}, CAP)
    assert await first.charge("acme", DAY, {"webhook": 0}, CAP)  # both have now seen 800,000
    shared.down = True
    admitted = 0
    for ledger in (first, second):
        while await ledger.charge("acme", DAY, {"webhook": 10_000}, CAP):
            admitted += 10_000
    assert admitted == CAP - 800_000
    shared.down = False
    await first.add([])
    await second.add([])
    assert (await shared.store.spend("acme", DAY)).total == CAP


async def test_local_charge_without_a_cap_admits(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A tenant with no budget is admitted in local mode too (no cap to divide)."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 4)
    assert await ledger.charge("acme", DAY, {"webhook": 10 * CAP}, None, mode="local")


@pytest.mark.parametrize(
    ("mode", "held"),
    [("local", [True, True, False]), ("open", [True, True, True])],
    ids=["local", "open"],
)
async def test_reserve_follows_the_mode(
    primary: FlakyLedger, local: MemoryLedger, mode: FailureMode, held: list[bool]
) -> None:
    """Primary down: local holds within this instance's share, open holds without a cap."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 2)
    reservations = [await ledger.reserve("acme", DAY, 250_000, 1_000_000, TTL, mode=mode) for _ in range(3)]
    assert [reservation is not None for reservation in reservations] == held
    assert all(reservation.local for reservation in reservations if reservation is not None)
    assert (await local.spend("acme", DAY)).reserved == 250_000 * sum(held)


async def test_closed_reserve_says_unavailable_not_over_budget(primary: FlakyLedger, local: MemoryLedger) -> None:
    """Primary down, mode closed: reserve raises the store's error (its caller answers 503, not
    the 429 of a day that is spent), holds nothing, and marks the ledger degraded."""
    primary.down = True
    ledger = FailoverLedger(primary, local)
    with pytest.raises(BackendError):
        await ledger.reserve("acme", DAY, 100, CAP, TTL, "closed")
    assert ledger.degraded and not local.holding
    primary.down = False
    assert await ledger.reserve("acme", DAY, CAP + 1, CAP, TTL, "closed") is None


async def test_a_hold_made_here_settles_on_the_primary_once_it_answers(
    primary: FlakyLedger, local: MemoryLedger
) -> None:
    """A hold made while the primary was down is settled there once it answers (the cost booked
    there, no replay needed) and dropped here, so it no longer counts against this instance's share."""
    primary.down = True
    ledger = FailoverLedger(primary, local)
    first = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    second = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    assert first is not None and second is not None and first.local
    primary.down = False
    primary.calls.clear()
    await ledger.commit(first, {"llm": 80})
    await ledger.release(second)
    assert primary.calls == ["commit", "release"]
    assert await primary.store.spend("acme", DAY) == Spend(DAY, {"llm": 80}, 0)
    assert (await local.spend("acme", DAY)).reserved == 0
    assert ledger.unsynced == 0


async def test_a_hold_settled_while_the_primary_is_down_is_dropped_here(
    primary: FlakyLedger, local: MemoryLedger
) -> None:
    """A hold made here and settled here with the primary still down (by a rebuilt reservation,
    as a call's final status does) leaves nothing held: its cost is kept to replay, its hold gone."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 1)
    assert await ledger.reserve("acme", DAY, 600_000, CAP, TTL, id="call:CA1") is not None
    await ledger.commit(Reservation("acme", DAY, "call:CA1", 600_000), {"voice": 10})
    assert (await local.spend("acme", DAY)).reserved == 0
    assert ledger.unsynced == 10
    # The share is free again but for the 10 booked: a second call's hold fits.
    assert await ledger.reserve("acme", DAY, CAP - 10, CAP, TTL, id="call:CA2") is not None


async def test_extend_goes_where_the_hold_is(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A local hold is extended locally; a shared one on the primary, and a primary that fails
    raises (the hold may be live: its holder tries again) and marks the ledger degraded."""
    ledger = FailoverLedger(primary, local)
    shared = await ledger.reserve("acme", DAY, 100, CAP, TTL, id="stream:CA1")
    assert shared is not None and await ledger.extend(shared, TTL)
    primary.down = True
    with pytest.raises(BackendError):
        await ledger.extend(shared, TTL)
    assert ledger.degraded
    held_here = await ledger.reserve("acme", DAY, 100, CAP, TTL, id="stream:CA2")
    assert held_here is not None and held_here.local
    primary.calls.clear()
    assert await ledger.extend(held_here, TTL)
    assert primary.calls == []


async def test_failed_writes_are_kept_locally_and_logged_once_per_streak(
    primary: FlakyLedger, local: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """commit, release and add never raise: the cost is kept here, and one warning is logged per failure streak."""
    ledger = FailoverLedger(primary, local)
    reservation = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    assert reservation is not None
    primary.down = True
    with caplog.at_level(logging.INFO, logger="gateway.limits.budget_failover"):
        await ledger.commit(reservation, {"llm": 90})
        await ledger.release(reservation)
        await ledger.add([("acme", DAY, {"voice": 8_500}, None), ("beta", DAY, {"sms": 7_900}, None)])
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "commit of reservation" in caplog.records[0].getMessage()
        primary.down = False
        await ledger.add([("acme", DAY, {"voice": 1}, None)])
        primary.down = True
        await ledger.add([("acme", DAY, {"voice": 1}, None)])
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "INFO", "WARNING"]
    assert "replayed 16490 µ$ over 2 tenant-days" in caplog.records[2].getMessage()
    assert (await local.spend("acme", DAY)).parts == {"llm": 90, "voice": 8_501}
    assert (await local.spend("beta", DAY)).parts == {"sms": 7_900}
    assert (await primary.store.spend("acme", DAY)).parts == {"llm": 90, "voice": 8_501}
    assert ledger.unsynced == 1


async def test_spend_does_not_pass_off_the_local_share(primary: FlakyLedger, local: MemoryLedger) -> None:
    """spend() with the primary down raises BackendError rather than report this instance's share."""
    primary.down = True
    ledger = FailoverLedger(primary, local)
    await ledger.add([("acme", DAY, {"voice": 1}, None)])
    with pytest.raises(BackendError):
        await ledger.spend("acme", DAY)


async def test_degraded_follows_the_primary(primary: FlakyLedger, local: MemoryLedger) -> None:
    """degraded is set by a failure and cleared by the primary's next answer, reported once each."""
    ledger = FailoverLedger(primary, local)
    seen: list[tuple[bool, BackendError | None]] = []
    ledger.on_transition(lambda degraded, error: seen.append((degraded, error)))
    primary.down = True
    await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    await ledger.add([("acme", DAY, {"voice": 1}, None)])
    assert ledger.degraded
    primary.down = False
    await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert not ledger.degraded
    assert [degraded for degraded, _ in seen] == [True, False]
    assert isinstance(seen[0][1], BackendError) and seen[1][1] is None


async def test_charge_now_only_in_process(primary: FlakyLedger, local: MemoryLedger, clock: FakeClock) -> None:
    """charge_now() answers at once over a MemoryLedger primary, and is None over a shared one."""
    shared: Ledger = FailoverLedger(primary, local)
    in_process: Ledger = FailoverLedger(MemoryLedger(clock), local)
    assert shared.charge_now("acme", DAY, {"webhook": CAP}, CAP) is None
    assert in_process.charge_now("acme", DAY, {"webhook": CAP}, CAP) is True
    assert in_process.charge_now("acme", DAY, {"webhook": 1}, CAP) is False
    assert primary.calls == []


async def test_other_errors_are_not_swallowed(local: MemoryLedger, clock: FakeClock) -> None:
    """Only BackendError means 'store down'; a bug in the primary still surfaces."""

    class Broken(FlakyLedger):
        async def charge(
            self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None, hold: Hold | None = None
        ) -> bool:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        await FailoverLedger(Broken(clock), local).charge("acme", DAY, {"webhook": 1}, CAP)


async def test_close_closes_both(primary: FlakyLedger, local: MemoryLedger) -> None:
    """close() closes the primary and empties the local ledger."""
    await local.add([("acme", DAY, {"voice": 1}, None)])
    await FailoverLedger(primary, local).close()
    assert primary.closed
    assert (await local.spend("acme", DAY)).parts == {}


async def test_memory_once_lasts_once_ttl(local: MemoryLedger, clock: FakeClock) -> None:
    """A once id books nothing until ONCE_TTL has passed, whatever the day; then it books again."""
    entry: Entry = ("acme", DAY, {"voice": 8_500}, "call:CA1")
    await local.add([entry])
    clock.advance(ONCE_TTL - 0.001)
    await local.add([entry, ("acme", "2024-05-02", {"voice": 8_500}, "call:CA1")])
    assert (await local.spend("acme", DAY)).parts == {"voice": 8_500}
    assert (await local.spend("acme", "2024-05-02")).parts == {}
    clock.advance(0.001)
    await local.add([entry])
    assert (await local.spend("acme", DAY)).parts == {"voice": 17_000}


async def test_memory_forgets_once_ids_past_ttl(local: MemoryLedger, clock: FakeClock) -> None:
    """Ids past ONCE_TTL are dropped from memory, not only ignored, so a process holds two days' worth."""
    await local.add([("acme", DAY, {"voice": 1}, f"call:CA{i}") for i in range(100)])
    clock.advance(ONCE_TTL)
    await local.add([("acme", DAY, {"voice": 1}, "call:CA-new")])
    assert list(local._once) == [("acme", "call:CA-new")]


async def test_add_now_returns_what_it_booked(local: MemoryLedger) -> None:
    """add_now() answers with the entries booked: not those refused by their once id, nor empty ones."""
    booked = local.add_now(
        [
            ("acme", DAY, {"voice": 1}, "call:CA1"),
            ("acme", DAY, {"voice": 1}, "call:CA1"),
            ("acme", DAY, {}, "call:CA2"),
            ("beta", DAY, {"sms": 2}, None),
        ]
    )
    assert booked == [("acme", DAY, {"voice": 1}, "call:CA1"), ("beta", DAY, {"sms": 2}, None)]
    assert local.add_now([("acme", DAY, {"voice": 1}, "call:CA2")]) == [("acme", DAY, {"voice": 1}, "call:CA2")]


async def test_spend_while_down_is_replayed_once_the_primary_answers(primary: FlakyLedger, local: MemoryLedger) -> None:
    """Charges, commits and adds booked here while the primary failed reach it with its next answer, once."""
    ledger = FailoverLedger(primary, local)
    shared_hold = await ledger.reserve("acme", DAY, 1_000, CAP, TTL)
    assert shared_hold is not None
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP, mode="local")
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP, mode="open")
    assert not await ledger.charge("acme", DAY, {"webhook": 100}, CAP, mode="closed")
    assert not await ledger.charge("acme", DAY, {"webhook": 2 * CAP}, CAP, mode="local")
    local_hold = await ledger.reserve("acme", DAY, 500, CAP, TTL)
    assert local_hold is not None and local_hold.local
    await ledger.commit(local_hold, {"llm": 400})
    await ledger.commit(shared_hold, {"llm": 900})
    await ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1"), ("beta", DAY, {"sms": 7_900}, None)])
    await ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1")])  # a replayed callback: booked nothing
    assert ledger.unsynced == 200 + 400 + 900 + 8_500 + 7_900
    primary.down = False
    primary.calls.clear()
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert primary.calls == ["charge", "add"]
    assert not ledger.degraded and ledger.unsynced == 0
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert primary.calls == ["charge", "add", "charge"]
    acme = await primary.store.spend("acme", DAY)
    assert dict(acme.parts) == {"webhook": 202, "llm": 1_300, "voice": 8_500}
    assert acme.reserved == 1_000  # the shared hold whose commit failed lapses at its ttl
    assert (await primary.store.spend("beta", DAY)).parts == {"sms": 7_900}
    assert (await local.spend("acme", DAY)).parts == {"webhook": 200, "llm": 1_300, "voice": 8_500}


async def test_the_next_add_carries_the_replay(primary: FlakyLedger, local: MemoryLedger) -> None:
    """An add() after the outage sends its entries and the unsynced amounts in one add() to the primary."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    await ledger.add([("acme", DAY, {"voice": 8_500}, None)])
    primary.down = False
    primary.added.clear()
    await ledger.add([("acme", DAY, {"voice": 1}, "call:CA2")])
    assert primary.added == [[("acme", DAY, {"voice": 1}, "call:CA2"), ("acme", DAY, {"voice": 8_500}, None)]]
    assert (await ledger.spend("acme", DAY)).parts == {"voice": 8_501}
    assert ledger.unsynced == 0


async def test_spend_replays_before_it_reads(primary: FlakyLedger, local: MemoryLedger) -> None:
    """spend() right after the outage includes what was booked here meanwhile."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
    primary.down = False
    assert (await ledger.spend("acme", DAY)).parts == {"webhook": 100}
    assert primary.calls == ["charge", "add", "spend"]


async def test_a_failed_replay_is_kept_for_the_next(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A replay the primary refuses stays unsynced (with what came meanwhile) and goes with its next answer."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
    primary.down = False
    primary.failing = {"add"}
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert ledger.degraded and ledger.unsynced == 100
    primary.failing = set()
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert not ledger.degraded and ledger.unsynced == 0
    assert (await primary.store.spend("acme", DAY)).parts == {"webhook": 102}


async def test_racing_calls_replay_once(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A call answered while the replay is in flight does not replay the same amounts again."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
    primary.down = False
    primary.entered, primary.resume = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(ledger.charge("acme", DAY, {"webhook": 1}, CAP))
    await primary.entered.wait()
    assert ledger.unsynced == 0  # taken by the replay in flight
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    primary.resume.set()
    assert await first
    assert primary.calls.count("add") == 1
    assert (await primary.store.spend("acme", DAY)).parts == {"webhook": 102}


async def test_a_cancelled_replay_is_kept(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A caller cancelled during the replay leaves the amounts unsynced, not dropped."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
    primary.down = False
    primary.entered, primary.resume = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(ledger.charge("acme", DAY, {"webhook": 1}, CAP))
    await primary.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.unsynced == 100


async def test_close_replays_or_says_what_is_lost(
    primary: FlakyLedger, local: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """close() replays what is unsynced; with the primary still down it warns of the amount lost."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
    primary.down = False
    await ledger.close()
    assert (await primary.store.spend("acme", DAY)).parts == {"webhook": 100}
    down = FailoverLedger(primary, MemoryLedger())
    primary.down = True
    assert await down.charge("acme", DAY, {"webhook": 7}, CAP)
    with caplog.at_level(logging.WARNING, logger="gateway.limits.budget_failover"):
        await down.close()
    assert "7 µ$ booked here while the shared ledger failed is lost" in caplog.records[-1].getMessage()


async def test_reserve_passes_the_id_to_either_ledger(primary: FlakyLedger, local: MemoryLedger) -> None:
    """reserve(id=...) holds under that id in the primary, or in the local ledger while it fails."""
    ledger = FailoverLedger(primary, local)
    shared = await ledger.reserve("acme", DAY, 5, CAP, TTL, id="llm:A")
    primary.down = True
    held = await ledger.reserve("acme", DAY, 5, CAP, TTL, id="llm:B")
    again = await ledger.reserve("acme", DAY, 6, CAP, TTL, id="llm:B")
    assert shared == Reservation("acme", DAY, "llm:A", 5)
    assert held == again == Reservation("acme", DAY, "llm:B", 5, local=True)
    assert (await local.spend("acme", DAY)).reserved == 5


@pytest.mark.parametrize("epoch", [-1.0, 0.0, 86_399.9, 86_400.0, 1_796_688_000.0])
def test_utc_day_remembers_only_the_day_it_named(epoch: float) -> None:
    """The one-day cache never answers for another day: each time, as strftime would."""
    for moment in (epoch, epoch + 86_400, epoch):
        assert utc_day(moment) == time.strftime("%Y-%m-%d", time.gmtime(moment))


async def test_a_second_outage_of_the_day_gets_its_share_again(primary: FlakyLedger, local: MemoryLedger) -> None:
    """What an outage booked here and the primary has since had counts once, in the primary's
    figure: the next outage of the day admits the share of what is left, not that less it again."""
    ledger = FailoverLedger(primary, local)
    assert await ledger.charge("acme", DAY, {"webhook": 600_000}, CAP)
    primary.down = True
    for _ in range(4):
        assert await ledger.charge("acme", DAY, {"webhook": 50_000}, CAP)
    primary.down = False
    await ledger.add([])  # the replay, with no figure in its reply
    assert ledger.last_seen("acme", DAY) == 800_000
    primary.down = True
    answers = [await ledger.charge("acme", DAY, {"webhook": 50_000}, CAP) for _ in range(5)]
    assert answers == [True] * 4 + [False]


async def test_holds_made_in_an_outage_move_to_the_primary(clock: FakeClock) -> None:
    """A hold made here while the primary failed is held there once it is back (same id, the
    ttl it has left), so another instance counts it; settled anywhere, it is gone from both."""
    shared = FlakyLedger(clock)
    first = FailoverLedger(shared, MemoryLedger(clock))
    second = FailoverLedger(shared, MemoryLedger(clock))
    shared.down = True
    held = await first.reserve("acme", DAY, 600_000, CAP, TTL, id="call:CA1")
    assert held is not None and held.local
    clock.advance(10)
    shared.down = False
    assert await first.charge("acme", DAY, {"webhook": 1}, CAP)  # answered: the move starts
    await asyncio.sleep(0)  # the move's task runs (no time passes: the fake clock stands)
    assert first._replaying is not None
    await first._replaying
    assert (await shared.store.spend("acme", DAY)).reserved == 600_000
    assert not first.local.holding
    assert not await second.charge("acme", DAY, {"webhook": 400_000}, CAP)
    clock.advance(TTL - 10)  # the hold kept only the ttl it had left
    assert (await shared.store.spend("acme", DAY)).reserved == 0
    again = await first.reserve("acme", DAY, 600_000, CAP, TTL, id="call:CA2")
    assert again is not None and not again.local
    await second.commit(Reservation("acme", DAY, "call:CA2", 600_000), {"voice": 5})
    assert await shared.store.spend("acme", DAY) == Spend(DAY, {"webhook": 1, "voice": 5}, 0)


async def test_a_hold_settled_while_it_moves_is_not_left_on_the_primary(
    primary: FlakyLedger, local: MemoryLedger
) -> None:
    """The holder settles its hold while the move to the primary is in flight: the copy the move
    made there is released, not left to count until its ttl."""
    ledger = FailoverLedger(primary, local)
    primary.down = True
    held = await ledger.reserve("acme", DAY, 500, CAP, TTL, id="llm:1")
    assert held is not None
    primary.down = False
    entered, resume = asyncio.Event(), asyncio.Event()
    reserve = primary.reserve

    async def slow_reserve(*args: object, **kwargs: object) -> Reservation | None:
        entered.set()
        await resume.wait()
        return await reserve(*args, **kwargs)  # type: ignore[arg-type]

    primary.reserve = slow_reserve  # type: ignore[method-assign]
    ledger.replay_soon()
    await entered.wait()
    await ledger.commit(held, {"llm": 400})
    resume.set()
    assert ledger._replaying is not None
    await ledger._replaying
    assert await primary.store.spend("acme", DAY) == Spend(DAY, {"llm": 400}, 0)
