"""FailoverLedger's answers when the shared ledger fails, the in-process ledger's own rules, and utc_day."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from gateway.errors import BackendError
from gateway.limits.base import FailureMode
from gateway.limits.budget import (
    RETENTION_DAYS,
    FailoverLedger,
    Ledger,
    MemoryLedger,
    Reservation,
    Spend,
    day_end,
    expire_at,
    utc_day,
)
from tests.support.clock import FakeClock

DAY = "2024-05-01"
CAP = 1_000_000
TTL = 30.0


class FlakyLedger:
    """A shared ledger that fails while `down` is set, else admits everything, recording calls."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []
        self.closed = False

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise BackendError("redis", f"ledger {name}", ConnectionError("refused"))

    def charge_now(self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None) -> bool | None:
        return None

    async def charge(self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None) -> bool:
        self._call("charge")
        return True

    async def reserve(self, tenant: str, day: str, amount: int, cap: int | None, ttl: float) -> Reservation | None:
        self._call("reserve")
        return Reservation(tenant, day, "shared-1", amount)

    async def commit(self, reservation: Reservation, cost: Mapping[str, int]) -> None:
        self._call("commit")

    async def release(self, reservation: Reservation) -> None:
        self._call("release")

    async def add(self, entries: Sequence[tuple[str, str, Mapping[str, int]]]) -> None:
        self._call("add")

    async def spend(self, tenant: str, day: str) -> Spend:
        self._call("spend")
        return Spend(day, {"voice": 42}, 0)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def primary() -> FlakyLedger:
    """A shared ledger the test can take down and bring back."""
    return FlakyLedger()


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
    await local.add([("acme", "2024-05-01", {"voice": 1}), ("acme", "2024-05-02", {"voice": 2})])
    assert await local.reserve("acme", "2024-05-01", 5, None, TTL) is not None
    await local.add([("beta", "2024-05-10", {"sms": 3})])  # 2024-05-02 is exactly RETENTION_DAYS before
    assert (await local.spend("acme", "2024-05-01")) == Spend("2024-05-01", {}, 0)
    assert (await local.spend("acme", "2024-05-02")).parts == {"voice": 2}
    assert (await local.spend("beta", "2024-05-10")).parts == {"sms": 3}


async def test_healthy_primary_answers(primary: FlakyLedger, local: MemoryLedger) -> None:
    """While the primary answers, its answers are returned and the local ledger is untouched."""
    ledger = FailoverLedger(primary, local)
    assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="closed")
    reservation = await ledger.reserve("acme", DAY, 5, CAP, TTL, mode="closed")
    assert reservation is not None and not reservation.local
    await ledger.commit(reservation, {"llm": 4})
    await ledger.release(reservation)
    await ledger.add([("acme", DAY, {"voice": 1})])
    assert (await ledger.spend("acme", DAY)).parts == {"voice": 42}
    assert primary.calls == ["charge", "reserve", "commit", "release", "add", "spend"]
    assert (await local.spend("acme", DAY)) == Spend(DAY, {}, 0)
    assert not ledger.degraded


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


async def test_local_charge_without_a_cap_admits(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A tenant with no budget is admitted in local mode too (no cap to divide)."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 4)
    assert await ledger.charge("acme", DAY, {"webhook": 10 * CAP}, None, mode="local")


@pytest.mark.parametrize(
    ("mode", "held"),
    [("local", [True, True, False]), ("open", [True, True, True]), ("closed", [False, False, False])],
    ids=["local", "open", "closed"],
)
async def test_reserve_follows_the_mode(
    primary: FlakyLedger, local: MemoryLedger, mode: FailureMode, held: list[bool]
) -> None:
    """Primary down: local holds within this instance's share, open holds without a cap, closed holds nothing."""
    primary.down = True
    ledger = FailoverLedger(primary, local, instances=lambda: 2)
    reservations = [await ledger.reserve("acme", DAY, 250_000, 1_000_000, TTL, mode=mode) for _ in range(3)]
    assert [reservation is not None for reservation in reservations] == held
    assert all(reservation.local for reservation in reservations if reservation is not None)
    assert (await local.spend("acme", DAY)).reserved == 250_000 * sum(held)


async def test_local_reservation_settles_locally(primary: FlakyLedger, local: MemoryLedger) -> None:
    """A reservation made while the primary was down settles in the local ledger, even once the primary is back."""
    primary.down = True
    ledger = FailoverLedger(primary, local)
    first = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    second = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    assert first is not None and second is not None
    primary.down = False
    primary.calls.clear()
    await ledger.commit(first, {"llm": 80})
    await ledger.release(second)
    assert primary.calls == []
    assert (await local.spend("acme", DAY)) == Spend(DAY, {"llm": 80}, 0)


async def test_failed_writes_are_kept_locally_and_logged_once_per_streak(
    primary: FlakyLedger, local: MemoryLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """commit, release and add never raise: the cost is kept here, and one warning is logged per failure streak."""
    ledger = FailoverLedger(primary, local)
    reservation = await ledger.reserve("acme", DAY, 100, CAP, TTL)
    assert reservation is not None
    primary.down = True
    with caplog.at_level(logging.INFO, logger="gateway.limits.budget"):
        await ledger.commit(reservation, {"llm": 90})
        await ledger.release(reservation)
        await ledger.add([("acme", DAY, {"voice": 8_500}), ("beta", DAY, {"sms": 7_900})])
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "commit of reservation" in caplog.records[0].getMessage()
        primary.down = False
        await ledger.add([("acme", DAY, {"voice": 1})])
        primary.down = True
        await ledger.add([("acme", DAY, {"voice": 1})])
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]
    assert (await local.spend("acme", DAY)).parts == {"llm": 90, "voice": 8_501}
    assert (await local.spend("beta", DAY)).parts == {"sms": 7_900}


async def test_spend_does_not_pass_off_the_local_share(primary: FlakyLedger, local: MemoryLedger) -> None:
    """spend() with the primary down raises BackendError rather than report this instance's share."""
    primary.down = True
    ledger = FailoverLedger(primary, local)
    await ledger.add([("acme", DAY, {"voice": 1})])
    with pytest.raises(BackendError):
        await ledger.spend("acme", DAY)


async def test_degraded_follows_the_primary(primary: FlakyLedger, local: MemoryLedger) -> None:
    """degraded is set by a failure and cleared by the primary's next answer, reported once each."""
    ledger = FailoverLedger(primary, local)
    seen: list[tuple[bool, BackendError | None]] = []
    ledger.on_transition(lambda degraded, error: seen.append((degraded, error)))
    primary.down = True
    await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    await ledger.add([("acme", DAY, {"voice": 1})])
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


async def test_other_errors_are_not_swallowed(primary: FlakyLedger, local: MemoryLedger) -> None:
    """Only BackendError means 'store down'; a bug in the primary still surfaces."""

    class Broken(FlakyLedger):
        async def charge(self, tenant: str, day: str, cost: Mapping[str, int], cap: int | None) -> bool:
            raise KeyError("bug")

    with pytest.raises(KeyError):
        await FailoverLedger(Broken(), local).charge("acme", DAY, {"webhook": 1}, CAP)


async def test_close_closes_both(primary: FlakyLedger, local: MemoryLedger) -> None:
    """close() closes the primary and empties the local ledger."""
    await local.add([("acme", DAY, {"voice": 1})])
    await FailoverLedger(primary, local).close()
    assert primary.closed
    assert (await local.spend("acme", DAY)).parts == {}
