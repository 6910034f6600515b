"""The spend ledger on every backend: caps, parts per day, reservations, expiry, bulk adds booked once,
and the replay of what was booked locally while Redis was down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest

from gateway.errors import BackendError
from gateway.limits.breaker import CircuitBreaker
from gateway.limits.budget import ONCE_TTL, RETENTION_DAYS, Entry, Hold, Reservation, Spend, expire_at, utc_day
from gateway.limits.budget_redis import held_key, once_key, spent_key
from gateway.limits.factory import Stores, stores_from_url
from gateway.limits.redis import RedisBuckets
from gateway.limits.redis_client import CircuitOpen
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer

# Today, not a fixed date: Redis expires a day's keys RETENTION_DAYS after it ends, by its own
# wall clock, so the keys of a long-past day would be gone as soon as written.
DAY = utc_day(time.time())
NEXT_DAY = (date.fromisoformat(DAY) + timedelta(days=1)).isoformat()

CAP = 1_000_000  # µ$: one dollar a day
TTL = 30.0
E = 7_000  # the estimate of one LLM answer

# For the tests of Redis itself: the stores fixture on the shared backends only.
SHARED_ONLY = pytest.mark.parametrize(
    "store_url",
    [
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("cluster", id="cluster", marks=pytest.mark.cluster),
    ],
    indirect=True,
)


@pytest.mark.parametrize(
    ("spent_before", "cost", "admitted", "total_after"),
    [
        (0, {"webhook": 999_999}, True, 999_999),
        (0, {"webhook": CAP}, True, CAP),
        (0, {"webhook": CAP + 1}, False, 0),
        (900_000, {"voice": 60_000, "sms": 40_000}, True, CAP),
        (900_000, {"voice": 60_000, "sms": 40_001}, False, 900_000),
    ],
    ids=["under", "at", "over", "parts-at", "parts-over"],
)
async def test_charge_is_admitted_up_to_the_cap(
    stores: Stores, spent_before: int, cost: dict[str, int], admitted: bool, total_after: int
) -> None:
    """A charge that brings the day to the cap is admitted and added; one µ$ more is refused and adds nothing."""
    ledger = stores.ledger
    if spent_before:
        assert await ledger.charge("acme", DAY, {"llm": spent_before}, None)
    assert await ledger.charge("acme", DAY, cost, CAP) is admitted
    assert (await ledger.spend("acme", DAY)).total == total_after


async def test_no_cap_admits_anything(stores: Stores) -> None:
    """cap None admits every charge and still records it."""
    assert await stores.ledger.charge("acme", DAY, {"voice": 10 * CAP}, None)
    assert await stores.ledger.charge("acme", DAY, {"voice": 1}, None)
    assert (await stores.ledger.spend("acme", DAY)).parts == {"voice": 10 * CAP + 1}


async def test_parts_are_summed_per_day_and_tenant(stores: Stores) -> None:
    """Parts add up within a day; another day and another tenant are apart."""
    ledger = stores.ledger
    for cost in ({"webhook": 100}, {"webhook": 100, "voice": 8_500}, {"sms": 7_900}):
        assert await ledger.charge("acme", DAY, cost, CAP)
    assert await ledger.charge("acme", NEXT_DAY, {"webhook": 100}, CAP)
    assert await ledger.charge("other", DAY, {"llm": 5}, CAP)
    today = await ledger.spend("acme", DAY)
    assert (today.day, dict(today.parts), today.reserved) == (DAY, {"webhook": 200, "voice": 8_500, "sms": 7_900}, 0)
    assert today.total == 16_600
    assert (await ledger.spend("acme", NEXT_DAY)).parts == {"webhook": 100}
    assert (await ledger.spend("other", DAY)).parts == {"llm": 5}
    assert (await ledger.spend("nobody", DAY)).parts == {}


async def test_a_full_day_does_not_cap_the_next(stores: Stores) -> None:
    """The cap is per day: a day at its cap leaves the next day's whole."""
    assert await stores.ledger.charge("acme", DAY, {"voice": CAP}, CAP)
    assert not await stores.ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    assert await stores.ledger.charge("acme", NEXT_DAY, {"voice": CAP}, CAP)


async def test_reservation_holds_then_commits_the_real_cost(stores: Stores) -> None:
    """A reservation counts against the cap until committed; the commit adds the real cost, not the estimate."""
    ledger = stores.ledger
    held = await ledger.reserve("acme", DAY, 600_000, CAP, TTL)
    assert held is not None and (held.tenant, held.day, held.amount) == ("acme", DAY, 600_000)
    assert len(held.id) == 32
    assert (await ledger.spend("acme", DAY)).reserved == 600_000
    assert not await ledger.charge("acme", DAY, {"webhook": 400_001}, CAP)
    assert await ledger.reserve("acme", DAY, 400_001, CAP, TTL) is None
    await ledger.commit(held, {"llm": 250_000})
    spend = await ledger.spend("acme", DAY)
    assert (dict(spend.parts), spend.reserved) == ({"llm": 250_000}, 0)
    assert await ledger.charge("acme", DAY, {"webhook": 750_000}, CAP)


async def test_release_frees_and_twice_is_harmless(stores: Stores) -> None:
    """A released reservation adds nothing and frees its amount; releasing it again changes nothing."""
    ledger = stores.ledger
    held = await ledger.reserve("acme", DAY, CAP, CAP, TTL)
    assert held is not None
    assert await ledger.reserve("acme", DAY, 1, CAP, TTL) is None
    await ledger.release(held)
    await ledger.release(held)
    spend = await ledger.spend("acme", DAY)
    assert (dict(spend.parts), spend.reserved) == ({}, 0)
    assert await ledger.reserve("acme", DAY, CAP, CAP, TTL) is not None


async def test_expired_reservation_stops_counting(stores: Stores, clock: FakeClock) -> None:
    """A reservation nobody commits (its instance died) counts until its ttl, then not at all."""
    ledger = stores.ledger
    assert await ledger.reserve("acme", DAY, CAP, CAP, TTL) is not None
    clock.advance(TTL - 0.001)
    assert not await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    clock.advance(0.001)
    assert (await ledger.spend("acme", DAY)).reserved == 0
    assert await ledger.charge("acme", DAY, {"webhook": CAP}, CAP)


async def test_late_commit_still_adds_the_cost(stores: Stores, clock: FakeClock) -> None:
    """Committing after the ttl adds the real cost anyway: the money was spent."""
    held = await stores.ledger.reserve("acme", DAY, E, CAP, TTL)
    assert held is not None
    clock.advance(2 * TTL)
    await stores.ledger.commit(held, {"llm": E + 1})
    spend = await stores.ledger.spend("acme", DAY)
    assert (dict(spend.parts), spend.reserved) == ({"llm": E + 1}, 0)


async def test_uncapped_reservation_is_still_held(stores: Stores) -> None:
    """A reservation without a cap always fits, and still counts against capped charges."""
    held = await stores.ledger.reserve("acme", DAY, 2 * CAP, None, TTL)
    assert held is not None
    assert (await stores.ledger.spend("acme", DAY)).reserved == 2 * CAP
    assert not await stores.ledger.charge("acme", DAY, {"webhook": 1}, CAP)


async def test_add_records_many_tenants_at_once(stores: Stores) -> None:
    """add() records every entry unconditionally, summing repeats, across tenants and days."""
    assert await stores.ledger.charge("acme", DAY, {"voice": CAP}, CAP)
    await stores.ledger.add(
        [
            ("acme", DAY, {"voice": 8_500}, None),
            ("acme", DAY, {"voice": 8_500, "stream": 4_000}, None),
            ("beta", DAY, {"sms": 7_900}, None),
            ("beta", NEXT_DAY, {"sms": 15_800}, None),
            ("gamma", DAY, {}, None),
        ]
    )
    assert (await stores.ledger.spend("acme", DAY)).parts == {"voice": CAP + 17_000, "stream": 4_000}
    assert (await stores.ledger.spend("beta", DAY)).parts == {"sms": 7_900}
    assert (await stores.ledger.spend("beta", NEXT_DAY)).parts == {"sms": 15_800}
    assert (await stores.ledger.spend("gamma", DAY)).parts == {}
    await stores.ledger.add([])


@SHARED_ONLY
async def test_add_is_one_pipeline(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    """add() of many tenants sends one pipeline (in a cluster, redis-py splits it by slot)."""
    client: Any = stores.client
    pipelines: list[object] = []
    make_pipeline = client.pipeline

    def counted(*args: Any, **kwargs: Any) -> Any:
        pipelines.append(args)
        return make_pipeline(*args, **kwargs)

    monkeypatch.setattr(client, "pipeline", counted)
    assert await stores.ledger.charge("warm-up", DAY, {"webhook": 1}, None)  # loads the script
    entries: list[Entry] = [(f"tenant-{i}", DAY, {"voice": i, "stream": 1}, None) for i in range(50)]
    entries += [(f"tenant-{i}", DAY, {"sms": 1}, f"call:CA{i}") for i in range(50)]
    await stores.ledger.add(entries)
    assert len(pipelines) == 1
    assert (await stores.ledger.spend("tenant-49", DAY)).parts == {"voice": 49, "stream": 1, "sms": 1}


@SHARED_ONLY
async def test_keys_expire_after_retention(stores: Stores) -> None:
    """A day's keys expire RETENTION_DAYS after the day ends, whichever op wrote them (memory: tests/unit)."""
    client = stores.client
    assert client is not None
    assert await stores.ledger.charge("acme", DAY, {"webhook": 1}, CAP)
    await stores.ledger.add([("beta", DAY, {"voice": 1}, None)])
    assert await stores.ledger.reserve("gamma", DAY, 1, CAP, TTL) is not None
    for key in (spent_key("acme", DAY), spent_key("beta", DAY), held_key("gamma", DAY)):
        ttl = await client.ttl(key)
        assert ttl > 0, key
        # The expiry is absolute, on Redis's wall clock; TTL is in whole seconds, rounded down.
        assert abs(time.time() + ttl - expire_at(DAY)) <= 2, key
        assert ttl > RETENTION_DAYS * 86_400 - 2


@pytest.mark.parametrize("day", ["2024-5-1", "20240501", "2024-02-30", "", "2024-05-01T00:00"])
async def test_a_malformed_day_is_refused(stores: Stores, day: str) -> None:
    """Only 'YYYY-MM-DD' names a day: any other spelling would split a day's spend across keys."""
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        await stores.ledger.charge("acme", day, {"webhook": 1}, CAP)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        await stores.ledger.add([("acme", DAY, {"webhook": 1}, "call:CA1"), ("acme", day, {"webhook": 1}, None)])
    assert (await stores.ledger.spend("acme", DAY)).parts == {}
    await stores.ledger.add([("acme", DAY, {"webhook": 1}, "call:CA1")])  # the refused batch kept no id
    assert (await stores.ledger.spend("acme", DAY)).parts == {"webhook": 1}


async def test_concurrent_reservations_never_overrun_the_cap(stores: Stores) -> None:
    """100 reservations at once against a cap of 10 estimates: exactly 10 are held, and spend ends at the cap."""
    ledger = stores.ledger
    # redis-py's async cluster client races when a burst opens many connections at once (a
    # driver error, then the local fallback): in a cluster, ten at a time, still concurrent.
    burst = 10 if "cluster" in stores.url else 100
    await ledger.spend("acme", DAY)  # a cluster client learns the slots on its first call
    held: list[Reservation | None] = []
    for _ in range(100 // burst):
        held += await asyncio.gather(*(ledger.reserve("acme", DAY, E, 10 * E, TTL) for _ in range(burst)))
    admitted = [reservation for reservation in held if reservation is not None]
    assert len(admitted) == 10
    assert len({reservation.id for reservation in admitted}) == 10
    assert (await ledger.spend("acme", DAY)).reserved == 10 * E
    await asyncio.gather(*(ledger.commit(reservation, {"llm": E}) for reservation in admitted))
    spend = await ledger.spend("acme", DAY)
    assert (spend.total, spend.reserved) == (10 * E, 0)


async def test_cancelled_callers_release_in_finally(stores: Stores) -> None:
    """Callers cancelled while their call-out is in flight release their holds: reserved goes back to 0."""
    ledger = stores.ledger
    all_held = asyncio.Event()
    holding: list[Reservation] = []

    async def call_out() -> None:
        reservation = await ledger.reserve("acme", DAY, E, 10 * E, TTL)
        assert reservation is not None
        try:
            holding.append(reservation)
            if len(holding) == 5:
                all_held.set()
            await asyncio.Event().wait()  # an answer that never comes
        finally:
            await ledger.release(reservation)

    tasks = [asyncio.create_task(call_out()) for _ in range(5)]
    await all_held.wait()
    assert (await ledger.spend("acme", DAY)).reserved == 5 * E
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    spend = await ledger.spend("acme", DAY)
    assert (dict(spend.parts), spend.reserved) == ({}, 0)


async def test_charge_now_answers_in_process_only(stores: Stores) -> None:
    """charge_now() answers (and charges) at once in process; for a shared store it is None and charges nothing."""
    answer = stores.ledger.charge_now("acme", DAY, {"webhook": CAP}, CAP)
    in_process = stores.client is None
    assert answer is (True if in_process else None)
    assert (await stores.ledger.spend("acme", DAY)).total == (CAP if in_process else 0)
    assert stores.ledger.charge_now("acme", DAY, {"webhook": 1}, CAP) is (False if in_process else None)


@pytest.mark.redis
async def test_a_dead_redis_falls_back_and_never_loses_a_write(
    redis_servers: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """With the server gone: charges follow the mode on this instance's ledger, starting from the
    last figure Redis gave (its hold counts), writes are kept there, spend raises."""
    server = redis_servers()
    stores = stores_from_url(server.url, clock=clock, breaker=CircuitBreaker(clock, failures=100))
    try:
        ledger = stores.ledger
        held = await ledger.reserve("acme", DAY, E, CAP, TTL)
        assert held is not None and not held.local
        assert ledger.last_seen("acme", DAY) == E
        server.stop()
        assert not await ledger.charge("acme", DAY, {"webhook": CAP - E + 1}, CAP, mode="local")
        assert await ledger.charge("acme", DAY, {"webhook": CAP - E}, CAP, mode="local")
        assert not await ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="local")
        assert not await ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="closed")
        assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="open")
        await ledger.commit(held, {"llm": E})
        await ledger.add([("acme", DAY, {"voice": 8_500}, None), ("beta", DAY, {"sms": 7_900}, None)])
        assert ledger.degraded
        assert (await ledger.local.spend("acme", DAY)).parts == {"webhook": CAP - E + 1, "llm": E, "voice": 8_500}
        with pytest.raises(BackendError):
            await ledger.spend("acme", DAY)
    finally:
        await stores.close()


@pytest.mark.redis
async def test_spend_booked_while_redis_was_down_reaches_it_once_back(
    redis_servers: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """Redis down: spend is booked locally; Redis back: the next call replays it there, and only once."""
    server = redis_servers()
    stores = stores_from_url(server.url, clock=clock, breaker=CircuitBreaker(clock, failures=100))
    try:
        ledger = stores.ledger
        server.stop()
        assert await ledger.charge("acme", DAY, {"webhook": 100}, CAP)
        held = await ledger.reserve("acme", DAY, E, CAP, TTL, id="llm:1")
        assert held is not None and held.local
        await ledger.commit(held, {"llm": E - 1})
        await ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1"), ("beta", DAY, {"sms": 7_900}, None)])
        await ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1")])
        assert ledger.unsynced == 100 + E - 1 + 8_500 + 7_900
        server.start()  # same port, empty: what Redis holds now is only what reaches it from here
        assert await ledger.charge("acme", DAY, {"webhook": 1}, CAP)
        assert not ledger.degraded and ledger.unsynced == 0
        await ledger.add([("acme", DAY, {"voice": 1}, None)])
        assert (await ledger.spend("acme", DAY)).parts == {"webhook": 101, "llm": E - 1, "voice": 8_501}
        assert (await ledger.spend("beta", DAY)).parts == {"sms": 7_900}
    finally:
        await stores.close()


async def test_add_once_books_an_id_once_per_tenant(stores: Stores) -> None:
    """A second add with the same once id books nothing, in the same batch or later, any day; another tenant's books."""
    ledger = stores.ledger
    await ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1"), ("acme", DAY, {"voice": 8_500}, "call:CA1")])
    await ledger.add(
        [
            ("acme", DAY, {"voice": 8_500}, "call:CA1"),
            ("acme", NEXT_DAY, {"voice": 8_500}, "call:CA1"),
            ("beta", DAY, {"voice": 8_500}, "call:CA1"),
            ("acme", DAY, {"voice": 1}, "call:CA2"),
            ("acme", DAY, {"voice": 1}, None),
            ("acme", DAY, {"voice": 1}, None),
        ]
    )
    assert (await ledger.spend("acme", DAY)).parts == {"voice": 8_503}
    assert (await ledger.spend("acme", NEXT_DAY)).parts == {}
    assert (await ledger.spend("beta", DAY)).parts == {"voice": 8_500}


async def test_add_once_with_no_cost_keeps_the_id_free(stores: Stores) -> None:
    """An entry with an empty cost books nothing, its once id included."""
    await stores.ledger.add([("acme", DAY, {}, "call:CA1")])
    await stores.ledger.add([("acme", DAY, {"voice": 8_500}, "call:CA1")])
    assert (await stores.ledger.spend("acme", DAY)).parts == {"voice": 8_500}


@SHARED_ONLY
async def test_a_once_id_lives_once_ttl(stores: Stores) -> None:
    """The id's key expires ONCE_TTL after the booking, on Redis's clock (memory: tests/unit)."""
    client = stores.client
    assert client is not None
    await stores.ledger.add([("acme", DAY, {"voice": 1}, "call:CA1")])
    ttl = await client.ttl(once_key("acme", "call:CA1"))
    assert ONCE_TTL - 2 <= ttl <= ONCE_TTL
    await client.delete(once_key("acme", "call:CA1"))  # as if expired
    await stores.ledger.add([("acme", DAY, {"voice": 1}, "call:CA1")])
    assert (await stores.ledger.spend("acme", DAY)).parts == {"voice": 2}


@SHARED_ONLY
async def test_add_once_survives_a_flushed_script_cache(stores: Stores) -> None:
    """After a restart the server has no scripts: the once entries are resent after loading it, booked once."""
    client: Any = stores.client
    assert await stores.ledger.charge("acme", DAY, {"webhook": 1}, None)  # loads the script
    await client.script_flush()
    await stores.ledger.add([("acme", DAY, {"voice": 1}, "call:CA1"), ("acme", DAY, {"sms": 2}, None)])
    await stores.ledger.add([("acme", DAY, {"voice": 1}, "call:CA1")])
    assert (await stores.ledger.spend("acme", DAY)).parts == {"webhook": 1, "voice": 1, "sms": 2}


async def test_reserve_with_an_id_holds_it_once(stores: Stores) -> None:
    """A second reserve of a live id returns the hold as it is, without a second hold or a cap check."""
    ledger = stores.ledger
    held = await ledger.reserve("acme", DAY, E, CAP, TTL, id="llm:CA1:1")
    assert held == Reservation("acme", DAY, "llm:CA1:1", E)
    assert await ledger.charge("acme", DAY, {"webhook": CAP - E}, CAP)
    assert await ledger.reserve("acme", DAY, 2 * E, CAP, TTL, id="llm:CA1:1") == held
    assert await ledger.reserve("acme", DAY, E, CAP, TTL, id="llm:CA1") is None  # a prefix is another id
    assert (await ledger.spend("acme", DAY)).reserved == E


async def test_a_rebuilt_reservation_settles(stores: Stores) -> None:
    """Another request (any instance) commits a hold by rebuilding it from tenant, day, id and amount."""
    ledger = stores.ledger
    assert await ledger.reserve("acme", DAY, E, CAP, TTL, id="llm:1") is not None
    await ledger.commit(Reservation("acme", DAY, "llm:1", E), {"llm": E - 5})
    spend = await ledger.spend("acme", DAY)
    assert (dict(spend.parts), spend.reserved) == ({"llm": E - 5}, 0)


async def test_a_settled_or_expired_id_may_be_held_again(stores: Stores, clock: FakeClock) -> None:
    """Once released or expired, reserving the id holds anew, with the new amount."""
    ledger = stores.ledger
    held = await ledger.reserve("acme", DAY, E, CAP, TTL, id="llm:1")
    assert held is not None
    await ledger.release(held)
    again = await ledger.reserve("acme", DAY, 2 * E, CAP, TTL, id="llm:1")
    assert again == Reservation("acme", DAY, "llm:1", 2 * E)
    clock.advance(TTL)
    assert await ledger.reserve("acme", DAY, 3 * E, CAP, TTL, id="llm:1") == Reservation("acme", DAY, "llm:1", 3 * E)
    assert (await ledger.spend("acme", DAY)).reserved == 3 * E


@SHARED_ONLY
async def test_the_limiters_breaker_spares_the_ledger_the_deadline(stores: Stores, clock: FakeClock) -> None:
    """With the limiter's breaker open, a charge fails over without calling Redis; a probe later closes it."""
    assert isinstance(stores.limiter, RedisBuckets)
    breaker = stores.limiter.breaker
    for _ in range(3):
        breaker.record_failure()
    assert not breaker.healthy
    assert not await stores.ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="closed")
    assert (await stores.ledger.local.spend("acme", DAY)).parts == {}
    with pytest.raises(BackendError) as caught:
        await stores.ledger.primary.charge("acme", DAY, {"webhook": 1}, CAP)
    assert isinstance(caught.value.cause, CircuitOpen)
    clock.advance(1.0)
    assert await stores.ledger.charge("acme", DAY, {"webhook": 1}, CAP, mode="closed")
    assert breaker.healthy and not stores.ledger.degraded
    assert (await stores.ledger.spend("acme", DAY)).parts == {"webhook": 1}


async def test_extend_keeps_a_live_hold(stores: Stores, clock: FakeClock) -> None:
    """A hold extended before its ttl counts on past it; one settled or expired is not brought back."""
    ledger = stores.ledger
    held = await ledger.reserve("acme", DAY, E, CAP, TTL, id="stream:CA1")
    assert held is not None
    clock.advance(TTL - 1)
    assert await ledger.extend(held, TTL)
    clock.advance(TTL - 1)
    assert (await ledger.spend("acme", DAY)).reserved == E
    clock.advance(1)
    assert (await ledger.spend("acme", DAY)).reserved == 0
    assert not await ledger.extend(held, TTL)
    assert (await ledger.spend("acme", DAY)).reserved == 0
    again = await ledger.reserve("acme", DAY, E, CAP, TTL, id="stream:CA1")
    assert again is not None
    await ledger.release(again)
    assert not await ledger.extend(again, TTL)


async def test_a_hold_is_settled_by_its_id_for_the_amount_it_holds(stores: Stores) -> None:
    """A hold is named by its id: settled with another amount it frees what it held, no more
    and no less, so the held total kept beside the holds never drifts."""
    ledger = stores.ledger
    assert await ledger.reserve("acme", DAY, E, CAP, TTL, id="stream:CA1") is not None
    assert await ledger.reserve("acme", DAY, E, CAP, TTL, id="stream:CA2") is not None
    await ledger.release(Reservation("acme", DAY, "stream:CA1", 2 * E))
    assert (await ledger.spend("acme", DAY)).reserved == E
    await ledger.release(Reservation("acme", DAY, "stream:CA1", E))  # settled already: nothing more
    assert (await ledger.spend("acme", DAY)).reserved == E
    await ledger.commit(Reservation("acme", DAY, "stream:CA2", 1), {"stream": 7})
    assert await ledger.spend("acme", DAY) == Spend(DAY, {"stream": 7}, 0)


async def test_a_lapsed_hold_is_dead_even_before_it_is_pruned(stores: Stores, clock: FakeClock) -> None:
    """More holds lapsing at once than one step prunes (256 on Redis): one of those not pruned
    yet is dead all the same, as in process: not extended, and its id held anew at its new amount."""
    ledger = stores.ledger
    for i in range(300):
        assert await ledger.reserve("acme", DAY, 1, None, TTL, id=f"a:{i:03}") is not None
    last = await ledger.reserve("acme", DAY, E, None, TTL, id="z:last")  # sorts after the rest
    assert last is not None
    clock.advance(TTL)
    assert not await ledger.extend(last, TTL)
    again = await ledger.reserve("acme", DAY, 2 * E, None, TTL, id="z:last")
    assert again == Reservation("acme", DAY, "z:last", 2 * E)
    assert await ledger.charge("acme", DAY, {"webhook": 1}, None, Hold("z:call", 3 * E, TTL))
    for _ in range(3):  # the rest pruned by the next steps
        await ledger.spend("acme", DAY)
    assert await ledger.spend("acme", DAY) == Spend(DAY, {"webhook": 1}, 5 * E)
