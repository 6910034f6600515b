"""Egress.forward's one retry: a connection that failed before anything was sent is tried once
more, within what is left of the same timeout; any other failure is not retried (a fake hop)."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import pytest

from gateway.deadline import Deadline
from gateway.egress import Egress
from gateway.errors import UpstreamError
from gateway.hop import Answer, HopFailure, Target
from tests.support.clock import FakeClock

TARGET = Target.parse("http://runtime.test/status")
ANSWER = Answer(204, [], b"")


@dataclass
class FakeHop:
    """Fails with each of `failures` in turn (each taking `cost` seconds of the clock), then answers."""

    clock: FakeClock
    failures: list[str]
    cost: float = 0.0
    given: list[float] = field(default_factory=list)  # the timeout each exchange was given

    async def exchange(self, target: Target, head: bytes, body: bytes, within: float, max_body: int) -> Answer:
        self.given.append(within)
        self.clock.advance(self.cost)
        if self.failures:
            raise HopFailure(self.failures.pop(0), "fake")
        return ANSWER

    def close(self) -> None:
        pass


async def _forward(hop: FakeHop, clock: FakeClock) -> Answer:
    async with aiohttp.ClientSession() as session:  # unused by forward: the hop does the work
        egress = Egress(session, hop)  # type: ignore[arg-type]  # a stand-in for the Hop
        return await egress.forward(TARGET, b"", b"", name="status", deadline=Deadline.after(15, clock), cap=5.0)


async def test_a_connect_failure_is_tried_once_more_within_the_same_timeout(clock: FakeClock) -> None:
    """Refused after 1 s: the second try gets the 4 s left of the 5 s cap, and its answer counts."""
    hop = FakeHop(clock, ["connect"], cost=1.0)
    assert await _forward(hop, clock) is ANSWER
    assert hop.given == [5.0, 4.0]


async def test_a_failure_after_sending_is_not_retried(clock: FakeClock) -> None:
    """A connection lost mid-exchange may have been processed: one try, its reason raised."""
    hop = FakeHop(clock, ["connection"])
    with pytest.raises(UpstreamError) as raised:
        await _forward(hop, clock)
    assert raised.value.reason == "connection" and len(hop.given) == 1


async def test_a_connect_that_used_the_whole_timeout_is_not_retried(clock: FakeClock) -> None:
    """A connect that timed out (5 s gone): no second try past the cap."""
    hop = FakeHop(clock, ["connect"], cost=5.0)
    with pytest.raises(UpstreamError) as raised:
        await _forward(hop, clock)
    assert raised.value.reason == "connect" and len(hop.given) == 1


async def test_two_connect_failures_raise_the_second(clock: FakeClock) -> None:
    """Refused twice: one retry only, then UpstreamError(connect)."""
    hop = FakeHop(clock, ["connect", "connect"])
    with pytest.raises(UpstreamError) as raised:
        await _forward(hop, clock)
    assert raised.value.reason == "connect" and len(hop.given) == 2
