"""The exchange: one record per request, its snapshot, deadline and timings."""

from __future__ import annotations

import pytest

from gateway.exchange import Exchange
from gateway.policy.registry import PolicySet
from tests.support.clock import FakeClock

EMPTY = PolicySet.of({})


def test_a_new_record_knows_only_its_kind_snapshot_and_start(clock: FakeClock) -> None:
    """Fields the request has not reached yet are None (or False), not shared mutable state."""
    exchange = Exchange("voice", EMPTY, clock)
    assert (exchange.kind, exchange.policies, exchange.started) == ("voice", EMPTY, clock())
    assert exchange.tenant is None and exchange.decision is None and exchange.limit is None
    assert exchange.verified is False
    assert exchange.cost is None and exchange.timings is None and exchange.charged is None
    assert vars(exchange).keys() == {"kind", "policies", "clock", "started"}, "defaults cost nothing per request"


def test_deadline_is_twilios_budget_from_the_start(clock: FakeClock) -> None:
    """The deadline runs from when the request began, not from when it is asked for."""
    exchange = Exchange("sms", EMPTY, clock)
    clock.advance(3.0)
    assert exchange.deadline().remaining() == pytest.approx(exchange.budget - 3.0)
    assert exchange.elapsed() == pytest.approx(3.0)


def test_timings_add_up_per_step(clock: FakeClock) -> None:
    """Each I/O step's time is recorded under its name; repeated steps add up."""
    exchange = Exchange("voice", EMPTY, clock)
    exchange.timed("redis", 0.002)
    exchange.timed("redis", 0.001)
    exchange.timed("upstream", 0.5)
    assert exchange.timings == pytest.approx({"redis": 0.003, "upstream": 0.5})


def test_records_do_not_share_state(clock: FakeClock) -> None:
    """Timings of one request never appear in another's record."""
    first, second = Exchange("voice", EMPTY, clock), Exchange("voice", EMPTY, clock)
    first.timed("redis", 1.0)
    assert second.timings is None
