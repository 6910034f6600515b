"""The access-log line: read once from the exchange, every request value bounded; lines buffered."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.exchange import Exchange
from gateway.limits.base import Decision, Rule
from gateway.policy.registry import PolicySet
from gateway.telemetry import accesslog
from gateway.telemetry.accesslog import MAX_ENTRIES, LineBuffer, line
from tests.support.clock import FakeClock

SID = "CA" + "0123456789abcdef" * 2
ROOT = Path(__file__).resolve().parents[3]


def _exchange(clock: FakeClock, **fields: object) -> Exchange:
    exchange = Exchange("voice", PolicySet.of({}), clock)
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def test_numbers_masked_and_sid_kept(clock: FakeClock) -> None:
    """Caller and called are masked; a well-shaped CallSid is logged as is."""
    exchange = _exchange(clock, caller="+15557654321", called="+15551230001", sid=SID, decision="answered")
    record = line(make_mocked_request("POST", "/twilio/voice"), 200, 0.001, exchange)
    assert (record["caller"], record["called"], record["sid"]) == ("+1******4321", "+1******0001", SID)
    assert record["decision"] == "answered"


@pytest.mark.parametrize(
    "sid",
    ["CA" + "0" * 31, "CA" + "0" * 33, "ca" + "0" * 32, "CA" + "G" * 32, "CA" + "0" * 32 + "\n", "x" * 100_000],
    ids=["short", "long", "lower-prefix", "not-hex", "newline", "huge"],
)
def test_sids_of_another_shape_are_not_logged(clock: FakeClock, sid: str) -> None:
    """Only two capitals and 32 hex digits is a SID; anything else from the request is dropped."""
    record = line(make_mocked_request("POST", "/twilio/voice"), 403, 0.0, _exchange(clock, sid=sid))
    assert "sid" not in record


def test_every_request_value_is_bounded(clock: FakeClock) -> None:
    """Megabyte numbers and paths make a line of a few hundred bytes."""
    huge = "9" * 1_000_000
    exchange = _exchange(clock, caller="+1" + huge, called=huge, sid=huge)
    record = line(make_mocked_request("POST", "/t/x/" + huge), 403, 0.0, exchange)
    assert len(orjson.dumps(record)) < 600


def test_client_closed_is_logged_as_499(clock: FakeClock) -> None:
    """Whatever response the handler built, a request whose client left is logged with 499."""
    record = line(make_mocked_request("POST", "/twilio/voice"), 204, 0.0, _exchange(clock, decision="client_closed"))
    assert record["status"] == 499


def test_time_comes_from_the_exchange(clock: FakeClock) -> None:
    """The line's milliseconds are the exchange's own, on the injected clock."""
    exchange = _exchange(clock)
    clock.advance(0.25)
    assert line(make_mocked_request("GET", "/"), 200, 9.9, exchange)["ms"] == 250.0


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    return read, write


def _read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


async def test_lines_of_one_tick_are_written_together() -> None:
    """Lines written in one loop tick reach the file only at the tick's end, in order, in one write."""
    read, write = _pipe()
    buffer = LineBuffer(write, interval=0)
    try:
        for i in range(3):
            buffer.write(b"%d\n" % i)
        assert _read_all(read) == b"", "nothing is written mid-tick"
        await asyncio.sleep(0)  # one loop iteration: the scheduled flush runs
        assert _read_all(read) == b"0\n1\n2\n"
    finally:
        os.close(read)
        os.close(write)


async def test_lines_wait_for_the_interval() -> None:
    """With an interval, lines outlive the tick; flush() (as at shutdown) writes them at once."""
    read, write = _pipe()
    buffer = LineBuffer(write, interval=60.0)
    try:
        buffer.write(b"a\n")
        await asyncio.sleep(0)
        assert _read_all(read) == b""
        buffer.flush()
        assert _read_all(read) == b"a\n"
    finally:
        os.close(read)
        os.close(write)


async def test_a_full_buffer_is_written_at_once(tmp_path: Path) -> None:
    """Past MAX_ENTRIES lines they are written at once, without waiting for the interval."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    buffer = LineBuffer(fd, interval=60.0)
    try:
        chunk = b"x" * 255 + b"\n"
        buffer.write(chunk)
        assert path.stat().st_size == 0, "one line waits for the interval"
        for _ in range(MAX_ENTRIES - 1):
            buffer.write(chunk)
        assert path.stat().st_size == MAX_ENTRIES * len(chunk)
    finally:
        os.close(fd)


def test_a_flush_scheduled_on_a_closed_loop_does_not_strand_later_lines() -> None:
    """Lines pending for a loop that closed before its flush fired get a flush on the next loop."""
    read, write = _pipe()
    buffer = LineBuffer(write, interval=0)

    async def log(line: bytes) -> None:
        buffer.write(line)

    try:
        stranded = asyncio.new_event_loop()
        stranded.close()
        buffer._entries.append(b"a\n")  # as if written while `stranded` ran, its flush never run
        buffer._scheduled_on = stranded
        asyncio.run(log(b"b\n"))
        assert _read_all(read) == b"a\nb\n"
    finally:
        os.close(read)
        os.close(write)


def test_a_full_non_blocking_output_keeps_the_rest() -> None:
    """When a non-blocking stdout takes only part of a write, the rest waits for the next flush."""
    read, write = _pipe()
    os.set_blocking(write, False)
    buffer = LineBuffer(write, interval=0)
    try:
        capacity = 0
        while True:  # fill the pipe
            try:
                capacity += os.write(write, b"\0" * 4096)
            except BlockingIOError:
                break
        buffer.write(b"kept\n")
        assert buffer.dropped == 0
        while _read_all(read):  # drain the filler
            pass
        buffer.flush()
        assert _read_all(read) == b"kept\n"
    finally:
        os.close(read)
        os.close(write)


def test_flush_is_registered_at_exit(tmp_path: Path) -> None:
    """A process that ends with lines still buffered writes them on its way out."""
    code = (
        "import asyncio\n"
        "from gateway.telemetry import accesslog\n"
        "async def main():\n"
        "    accesslog.BUFFER.write(b'last line\\n')\n"  # buffered for FLUSH_INTERVAL
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, cwd=ROOT).stdout
    assert out == b"last line\n"


async def test_entries_are_rendered_at_the_flush_with_their_own_time(clock: FakeClock) -> None:
    """A request's entry keeps its status and duration from when it ended; the line is rendered
    (masked, bounded) only when the buffer is written."""
    read, write = _pipe()
    buffer = LineBuffer(write, interval=0)
    exchange = _exchange(clock, caller="+15557654321", decision="answered")
    clock.advance(0.5)
    try:
        buffer.write((1_700_000_000.0, "POST", "/twilio/voice?x=1", 200, 0.5, exchange))
        assert _read_all(read) == b""  # nothing rendered or written yet
        await asyncio.sleep(0)
        record = orjson.loads(_read_all(read))
        assert (record["path"], record["ms"], record["caller"], record["ts"]) == (
            "/twilio/voice",
            500.0,
            "+1******4321",
            1_700_000_000.0,
        )
    finally:
        os.close(read)
        os.close(write)


class _Tenant:
    id = "acme-health"


@settings(max_examples=300, deadline=None)
@given(
    path=st.text(max_size=300),
    route=st.none() | st.text(max_size=40),
    caller=st.none() | st.text(max_size=60),
    called=st.none() | st.text(max_size=60),
    sid=st.none() | st.text(max_size=40) | st.from_regex(r"\A[A-Z]{2}[0-9a-f]{32}\Z"),
    method=st.text(min_size=1, max_size=30),
    status=st.integers(100, 599),
    seconds=st.floats(0, 100),
    decision=st.sampled_from([None, "answered", "forged", "client_closed", "fallback"]),
    timings=st.none() | st.dictionaries(st.sampled_from(["limits", "upstream"]), st.floats(0, 10), min_size=1),
)
def test_render_writes_the_record_as_json(
    path: str,
    route: str | None,
    caller: str | None,
    called: str | None,
    sid: str | None,
    method: str,
    status: int,
    seconds: float,
    decision: str | None,
    timings: dict[str, float] | None,
) -> None:
    """Any request and policy values make one valid JSON line holding exactly the record."""
    exchange = Exchange("voice", PolicySet.of({}), FakeClock())
    exchange.tenant = _Tenant()  # type: ignore[assignment]
    exchange.route, exchange.caller, exchange.called, exchange.sid = route, caller, called, sid
    exchange.decision, exchange.timings, exchange.action = decision, timings, "say"
    exchange.limit = Decision(True, 7, 0.0, 1.0, Rule("webhooks", 1.0, 1.0, 10))
    for subject in (exchange, None):
        entry = (1_795_000_000.123456, method, path, status, seconds, subject)
        rendered = accesslog.render(entry)
        assert rendered.endswith(b"\n") and rendered.count(b"\n") == 1
        assert orjson.loads(rendered) == orjson.loads(orjson.dumps(accesslog.record(entry)))


def test_a_lone_surrogate_is_escaped_not_fatal(clock: FakeClock) -> None:
    """Text that is not UTF-8 (a lone surrogate, say in a route name) is written escaped; the
    flush never raises."""
    rendered = accesslog.render((1.0, "POST", "/t/x", 200, 0.0, _exchange(clock, route="r\ud800")))
    assert json.loads(rendered)["route"] == "r\ud800"


def test_an_unrenderable_entry_costs_only_its_own_line(clock: FakeClock) -> None:
    """A lone surrogate in a route name is escaped at the flush, and the other lines still go out."""
    read, write = _pipe()
    buffer = LineBuffer(write, interval=0)
    try:
        buffer._entries.append((1.0, "POST", "/a", 200, 0.0, _exchange(clock, route="r\ud800")))
        buffer._entries.append((1.0, "POST", "/b", 200, 0.0, None))
        buffer.flush()
        lines = [json.loads(line) for line in _read_all(read).splitlines()]
        assert [line["path"] for line in lines] == ["/a", "/b"]
        assert lines[0]["route"] == "r\ud800"
    finally:
        os.close(read)
        os.close(write)


def test_big_flushes_are_written_in_whole_lines_of_at_most_pipe_buf(tmp_path: Path) -> None:
    """Writes stay within PIPE_BUF and end at a newline, so workers sharing a pipe never tear lines."""
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i % 300)) for i in range(200)]
    chunks = accesslog._chunks(b"".join(lines))
    assert b"".join(chunks) == b"".join(lines)
    assert all(len(chunk) <= accesslog.PIPE_BUF and chunk.endswith(b"\n") for chunk in chunks)
    assert len(chunks) > 1


def test_a_full_stdout_keeps_whole_lines_only() -> None:
    """When more than the bound is left unwritten, what is kept ends at a line end: no torn line."""
    read, write = _pipe()
    os.set_blocking(write, False)
    buffer = LineBuffer(write, interval=0)
    try:
        for i in range(1000):
            buffer._entries.append(b'{"n":%d,"pad":"%s"}\n' % (i, b"y" * 200))
        buffer.flush()  # the pipe takes what it can (64 KB), the rest is kept or dropped
        written = b""
        while chunk := _read_all(read):
            written += chunk
        buffer.flush()
        while chunk := _read_all(read):
            written += chunk
        assert written.endswith(b"\n")
        for line in written.splitlines():
            json.loads(line)  # every line whole
        assert buffer.dropped > 0
    finally:
        os.close(read)
        os.close(write)


def test_every_field_of_the_record_reaches_the_line(clock: FakeClock) -> None:
    """A record with every field set: each appears in the line under its name (a renamed field
    of the exchange would vanish from the log without this)."""
    exchange = _exchange(
        clock,
        route="main",
        action="say",
        decision="answered",
        retry="replay",
        error="UpstreamError",
        limit=Decision(True, 7, 0.0, 1.0, Rule("webhooks", 1.0, 1.0, 10)),
        caller="+15557654321",
        called="+15551230001",
        sid=SID,
        timings={"limits": 0.002},
    )
    exchange.tenant = _Tenant()  # type: ignore[assignment]
    record = orjson.loads(accesslog.render((1_700_000_000.5, "POST", "/twilio/voice", 200, 0.25, exchange)))
    assert record == {
        "ts": 1_700_000_000.5,
        "method": "POST",
        "path": "/twilio/voice",
        "status": 200,
        "ms": 250.0,
        "kind": "voice",
        "tenant": "acme-health",
        "route": "main",
        "action": "say",
        "decision": "answered",
        "retry": "replay",
        "error": "UpstreamError",
        "remaining": 7,
        "caller": "+1******4321",
        "called": "+1******0001",
        "sid": SID,
        "timings_ms": {"limits": 2.0},
    }
