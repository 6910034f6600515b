"""Which id books a request's cost once, however often it arrives."""

from __future__ import annotations

from gateway.exchange import Exchange
from gateway.policy.registry import PolicySet
from gateway.telemetry.usage import STREAM_SID, once_id
from tests.support.clock import FakeClock

CALL = "CA" + "1" * 32


def _exchange(clock: FakeClock, kind: str, fields: dict[str, str] | None) -> Exchange:
    exchange = Exchange(kind, PolicySet.of({}), clock)
    exchange.sid, exchange.fields = CALL, fields
    return exchange


def test_a_streams_minutes_are_booked_once_per_stream(clock: FakeClock) -> None:
    """Keyed by the stream's sid, not the call's: a call that opens two streams books both."""
    first = _exchange(clock, "stream", {STREAM_SID: "MZ" + "1" * 32})
    second = _exchange(clock, "stream", {STREAM_SID: "MZ" + "2" * 32})
    assert once_id(first) == "stream:MZ" + "1" * 32
    assert once_id(first) != once_id(second)
    assert once_id(_exchange(clock, "stream", None)) is None  # closed before its start


def test_a_status_callback_is_booked_once_per_call_and_status(clock: FakeClock) -> None:
    """A replayed `completed` callback has the id of the first; another status has its own."""
    completed = _exchange(clock, "status", {"CallSid": CALL, "CallStatus": "completed"})
    assert once_id(completed) == f"status:{CALL}:completed"
    assert once_id(_exchange(clock, "status", {"CallSid": CALL, "CallStatus": "busy"})) != once_id(completed)
    assert once_id(_exchange(clock, "voice", {"CallSid": CALL})) is None
