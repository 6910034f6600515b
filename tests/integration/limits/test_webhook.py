"""A webhook's buckets and budget in one step, on every backend: refused by either, charged by
neither; a call's hold made with the charge; one round trip on Redis; both fall back together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from gateway.limits.base import RetryKey, Rule
from gateway.limits.breaker import CircuitBreaker
from gateway.limits.budget import BudgetCharge, Hold, utc_day
from gateway.limits.factory import Stores, stores_from_url
from gateway.limits.webhook import Admission, admit, admit_now
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer

DAY = utc_day(time.time())
RULE = Rule("voice", rate=1, per=3600.0, burst=3)
PRICE = {"webhook": 1_000}
CAP = 5_000


async def _admit(
    stores: Stores, budget: BudgetCharge | None, rules: list[Rule] | None = None, retry: RetryKey | None = None
) -> Admission:
    rules = [RULE] if rules is None else rules
    now = admit_now(stores.failover, stores.ledger, "acme", rules, retry, budget)
    if now is not None:
        return now
    return await admit(stores.failover, stores.ledger, "acme", rules, retry, budget, "local")


def _charge(cost: dict[str, int] | None = None, hold: Hold | None = None, cap: int = CAP) -> BudgetCharge:
    return BudgetCharge(DAY, cap, PRICE if cost is None else cost, hold)


async def test_admitted_by_both_charges_both(stores: Stores) -> None:
    """Within the bucket and the cap: the bucket loses a token and the day gains the cost."""
    admission = await _admit(stores, _charge())
    assert admission.decision is not None and admission.decision.allowed and admission.budget == "charged"
    assert admission.decision.remaining == 2
    assert (await stores.ledger.spend("acme", DAY)).parts == PRICE


async def test_over_the_cap_charges_no_bucket(stores: Stores) -> None:
    """The day cannot hold it: over budget, and the bucket keeps its tokens (three more fit)."""
    assert (await _admit(stores, _charge(cost={"webhook": CAP + 1}))).budget == "over"
    answers = [await _admit(stores, _charge(cost={"webhook": 1})) for _ in range(3)]
    assert [a.budget for a in answers] == ["charged"] * 3
    assert (await stores.ledger.spend("acme", DAY)).total == 3


async def test_refused_by_the_bucket_charges_no_budget(stores: Stores) -> None:
    """The bucket empty: refused, and the day is not charged."""
    for _ in range(3):
        assert (await _admit(stores, _charge(cost={"webhook": 1}))).budget == "charged"
    refused = await _admit(stores, _charge(cost={"webhook": 1}))
    assert refused.decision is not None and not refused.decision.allowed and refused.budget == "none"
    assert (await stores.ledger.spend("acme", DAY)).total == 3


async def test_a_calls_hold_is_made_with_its_charge_and_not_twice(stores: Stores) -> None:
    """A voice webhook holds its call's estimate with its charge; the same call's webhook again
    (another token) holds nothing more; a hold that does not fit refuses the charge too."""
    hold = Hold("call:CA1", 3_000, 60.0)
    assert (await _admit(stores, _charge(hold=hold))).budget == "charged"
    assert (await _admit(stores, _charge(hold=hold))).budget == "charged"
    assert await stores.ledger.spend("acme", DAY) == await stores.ledger.spend("acme", DAY)
    spent = await stores.ledger.spend("acme", DAY)
    assert (spent.total, spent.reserved) == (2_000, 3_000)
    assert (await _admit(stores, _charge(hold=Hold("call:CA2", 3_000, 60.0)))).budget == "over"
    assert (await stores.ledger.spend("acme", DAY)).reserved == 3_000


async def test_a_replay_is_charged_neither_bucket_nor_budget(stores: Stores) -> None:
    """Twilio's retry of an admitted webhook (same token, same signed request): reported, not charged."""
    retry = RetryKey("tok-1", "sig-1")
    first = await _admit(stores, _charge(), retry=retry)
    again = await _admit(stores, _charge(), retry=retry)
    assert first.budget == "charged" and again.decision is not None and again.decision.retry == "replay"
    assert again.budget == "none" and again.decision.remaining == 2
    assert (await stores.ledger.spend("acme", DAY)).parts == PRICE


async def test_without_buckets_the_ledger_alone_decides(stores: Stores) -> None:
    """A tenant with a budget and no bucket for the kind: the day's charge, with its hold."""
    answers = [await _admit(stores, _charge(), rules=[]) for _ in range(6)]
    assert [a.budget for a in answers] == ["charged"] * 5 + ["over"]
    assert all(a.decision is None for a in answers)


async def test_a_burst_admits_exactly_what_the_day_holds(stores: Stores) -> None:
    """200 concurrent budgeted webhooks whose bucket would take them all: exactly five charged."""
    big = Rule("voice", rate=1000, per=1.0, burst=1000)
    answers = await asyncio.gather(*(_admit(stores, _charge(), rules=[big]) for _ in range(200)))
    assert sum(a.budget == "charged" for a in answers) == 5
    assert (await stores.ledger.spend("acme", DAY)).total == CAP


@pytest.mark.redis
async def test_a_budgeted_webhook_is_one_round_trip(redis_url: str, clock: FakeClock) -> None:
    """Buckets and budget in one EVALSHA: a budgeted webhook with a call's hold is one script
    call (a separate ledger step would be another EVALSHA), whether admitted or refused."""
    stores = stores_from_url(redis_url, clock=clock, deadline=2.0)
    try:
        await _admit(stores, _charge(cost={"webhook": 1}))  # the script loaded once, before counting
        with redis.Redis.from_url(redis_url) as client:
            client.config_resetstat()
            answers = [
                await _admit(stores, _charge(cost={"webhook": 1}, hold=Hold(f"call:CA{i}", 10, 60.0)))
                for i in range(10)
            ]
            stats = client.info("commandstats")
        assert [a.budget for a in answers] == ["charged"] * 2 + ["none"] * 8  # burst 3, one taken before
        assert stats["cmdstat_evalsha"]["calls"] == 10
        assert stores.ledger.last_seen("acme", DAY) == 3 + 2 * 10
    finally:
        await stores.close()


@pytest.mark.redis
async def test_redis_down_falls_back_for_both_from_the_last_figure(
    redis_servers: Callable[..., RedisServer], clock: FakeClock
) -> None:
    """Redis dies after saying 3,000 of 5,000 are spent: the local buckets and the local ledger
    (2,000 left, one instance) admit two more; `closed` refuses; Redis back, the spend replays."""
    server = redis_servers()
    stores = stores_from_url(server.url, clock=clock, deadline=2.0, breaker=CircuitBreaker(clock, failures=100))
    try:
        big = Rule("voice", rate=1000, per=1.0, burst=1000)
        for _ in range(3):
            assert (await _admit(stores, _charge(), rules=[big])).budget == "charged"
        server.stop()
        answers = [await _admit(stores, _charge(), rules=[big]) for _ in range(3)]
        assert [a.budget for a in answers] == ["charged", "charged", "over"]
        assert stores.failover.degraded and stores.ledger.degraded
        closed = await admit(stores.failover, stores.ledger, "acme", [big], None, _charge(), "closed")
        assert closed.decision is not None and not closed.decision.allowed
        server.start()
        clock.advance(2.0)
        assert (await _admit(stores, _charge(cost={"webhook": 0}), rules=[big])).budget == "charged"
        assert not stores.ledger.degraded
        # The restarted server lost its data (no persistence here): what this instance booked
        # meanwhile is there, once.
        assert (await stores.ledger.spend("acme", DAY)).total == 2_000
    finally:
        await stores.close()
