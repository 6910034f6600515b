"""One structured JSON line per request, read once from the request's exchange.

aiohttp calls the access logger once per request anyway; ours replaces its default, so the line
costs no extra hook. Lines are buffered and written to fd 1 together, every FLUSH_INTERVAL: one
`os.write` per request measured ~20 % of the gateway's throughput. `flush()` runs at shutdown
and at exit, so no line is lost.

Nothing read from a request reaches a line unbounded: the request may be unverified (a 1 MB
`CallSid` must not become a 1 MB line). SIDs are written only when they have a SID's shape,
phone numbers shortened and masked, the path cut.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import re
import select
import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.exchange import Exchange
from gateway.keys import EXCHANGE
from gateway.redact import mask_number

if TYPE_CHECKING:
    from gateway.telemetry.recorder import Ended, Recorder

log = logging.getLogger(__name__)

STDOUT = 1
# Flush at once past this many entries, whatever the interval: a flush blocks the loop while
# it renders, and 256 a flush measured p99 12-20 ms on the bench against 7-8 ms with 16-32.
MAX_ENTRIES = 32
# What a full non-blocking stdout may leave pending before lines are dropped.
MAX_BUFFER = 64 * 1024
PIPE_BUF = select.PIPE_BUF  # 4096 on Linux
# Lines wait at most this long for their write. Once per loop tick measured ~10 % of throughput
# still (a tick answers only a few requests); 20 ms gathers a few hundred lines under load and is
# nothing to a reader. A crash (SIGKILL) loses at most this much; shutdown and exit flush.
FLUSH_INTERVAL = 0.02
MAX_PATH = 200
MAX_NUMBER = 32  # E.164 is at most 16; SIP and client identities get room, not a megabyte
SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")


Entry = tuple[float, str, str, int, float, "Exchange | None"]
"""What the access log keeps of one request until its line is rendered: (wall-clock seconds,
method, raw path, status, duration in seconds, exchange). A plain tuple: one is made per request."""


class LineBuffer:
    """Entries gathered for `interval` seconds (0: until the end of the loop tick) or until
    MAX_ENTRIES of them, then rendered and written together with one write.

    The request's own path only appends a tuple; rendering (~1.5 µs a line alone) and the write
    happen at the flush. Measured on the bench (logged/memory throughput, docs/benchmarks.md):
    a line rendered and written per request 0.78; now 0.88; the same buffer writing a constant
    line 0.98, so what is left is the line's content, not its writing.
    """

    def __init__(self, fd: int = STDOUT, interval: float = FLUSH_INTERVAL) -> None:
        self.fd = fd
        self.interval = interval
        self._entries: list[Entry | bytes] = []
        # The pending flush and its loop; a loop closed before it fired (a test's, a worker's
        # at exit) must not leave later lines waiting for one that never comes.
        self._timer: asyncio.Handle | None = None
        self._scheduled_on: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # bytes given up on because the output would not take them
        # Write access lines at all (--no-access-log: no); the apps' recorders read the batch either way.
        self.lines = True

    def write(self, entry: Entry | bytes) -> None:
        """Queue one request's entry (or an already rendered line, newline included)."""
        entries = self._entries
        entries.append(entry)
        if len(entries) >= MAX_ENTRIES:
            self.flush()
            return
        scheduled = self._scheduled_on
        if scheduled is not None and not scheduled.is_closed():
            return
        self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling the logger directly): write now
            self.flush()
            return
        if self.interval > 0:
            self._timer = loop.call_later(self.interval, self.flush)
        else:
            self._timer = loop.call_soon(self.flush)
        self._scheduled_on = loop

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a flush for MAX_ENTRIES makes the pending one moot
            self._timer = None
        self._scheduled_on = None
        entries = self._entries
        if not entries:
            return
        self._entries = []
        _hand_over(entries)
        if not self.lines:
            entries = [entry for entry in entries if isinstance(entry, bytes)]  # a retry's leftovers
            if not entries:
                return
        data = b"".join(entry if isinstance(entry, bytes) else _rendered(entry) for entry in entries)
        try:
            # Chunks of at most PIPE_BUF, cut at line ends: the kernel keeps such a write to a
            # pipe whole, so workers sharing one stdout never interleave inside a line.
            for chunk in _chunks(data):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view) :]
                data = data[len(chunk) :]
        except BlockingIOError:
            # A non-blocking stdout that is full: keep what it did not take, up to the bound,
            # whole lines only (a line cut in two would join the next one), and try again.
            rest = bytes(view) + data[len(chunk) :]
            if len(rest) > MAX_BUFFER:
                cut = rest.find(b"\n", 0) + 1  # finish the line already begun
                self.dropped += len(rest) - cut
                rest = rest[:cut]
            self._entries.insert(0, rest)
            self._schedule_retry()
        except OSError:  # stdout gone: nothing better to do with the lines
            self.dropped += len(data)

    def _schedule_retry(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (at exit, or a test): the next flush takes them, if any
            return
        self._timer = loop.call_later(max(self.interval, 0.01), self.flush)
        self._scheduled_on = loop


def _hand_over(entries: list[Entry | bytes]) -> None:
    """Each app's ended exchanges to its recorder (cost, ledger, metrics, spans), before the
    lines are rendered, so a line carries the cost the recorder worked out."""
    batches: dict[Recorder, list[Ended]] = {}
    for entry in entries:
        if isinstance(entry, bytes):
            continue
        exchange = entry[5]
        if exchange is not None and (recorder := exchange.recorder) is not None:
            batch = batches.get(recorder)
            if batch is None:
                batch = batches[recorder] = []
            batch.append(entry)  # type: ignore[arg-type]  # its exchange is not None
    for recorder, batch in batches.items():
        try:
            recorder.consume(batch)
        except Exception:  # telemetry must never cost the access lines (or the next batch)
            log.exception("recording %d ended request(s) failed", len(batch))


def _rendered(entry: Entry) -> bytes:
    try:
        return render(entry)
    except Exception:  # one unrenderable entry must not cost the batch its other lines
        return b'{"error":"access line could not be rendered"}\n'


def _chunks(data: bytes) -> list[bytes]:
    if len(data) <= PIPE_BUF:
        return [data]
    chunks = []
    start = 0
    while start < len(data):
        end = start + PIPE_BUF
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else end  # a line longer than PIPE_BUF goes alone
        chunks.append(data[start:end])
        start = end
    return chunks


BUFFER = LineBuffer()
flush = BUFFER.flush
atexit.register(flush)


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp's end-of-request hook: every request ends here, once (the access line, and through
    the batch its app's recorder). It runs with --no-access-log too; then no line is written."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        exchange = request.get(EXCHANGE)
        # No transport: the client left before the answer went out (aiohttp logs the line anyway).
        # A WebSocket (101) is logged when it has ended, its connection gone by then whatever
        # the ending: its status is the upgrade's.
        gone = request.transport is None and response.status != 101
        status = Exchange.STATUS_CLIENT_CLOSED if gone else response.status
        if exchange is not None:
            time = exchange.elapsed()
            if exchange.decision == "client_closed":
                status = Exchange.STATUS_CLIENT_CLOSED  # nothing reached the client, whatever was built
            recorder = exchange.recorder
            if recorder is not None and recorder.traced:
                headers = request.headers
                exchange.traceparent = headers.get("traceparent")
                exchange.tracestate = headers.get("tracestate")
        BUFFER.write((_now(), request.method, request.raw_path, status, time, exchange))


def line(request: web.BaseRequest, status: int, seconds: float, exchange: Exchange | None) -> dict[str, object]:
    """The access-log record of one request as it ends now (tests, and callers without a buffer)."""
    if exchange is not None:
        seconds = exchange.elapsed()
    return record((_now(), request.method, request.raw_path, status, seconds, exchange))


def record(entry: Entry) -> dict[str, object]:
    """The access-log record of one request: everything bounded, numbers masked.

    Written out field by field (no loop over names): this form measured half the time of a
    generic one.
    """
    ts, method, raw_path, status, seconds, exchange = entry
    out: dict[str, object] = {
        # int()/1000, not round(x, 3): round with digits is correctly rounded via strings, ~10x slower.
        "ts": int(ts * 1000) / 1000,
        "method": method[:16],
        "path": _path(raw_path),
        "status": status,
        "ms": int(seconds * 1_000_000) / 1000,
    }
    if exchange is None:
        return out
    # The fields a request set are in its __dict__ (the defaults stay on the class): a dict
    # lookup each, not an attribute lookup that falls through to the class.
    fields = exchange.__dict__
    decision = fields.get("decision")
    if decision == "client_closed":
        out["status"] = Exchange.STATUS_CLIENT_CLOSED  # nothing reached the client, whatever was built
    out["kind"] = exchange.kind
    tenant = fields.get("tenant")
    if tenant is not None:
        out["tenant"] = tenant.id
    if value := fields.get("route"):
        out["route"] = value
    if value := fields.get("action"):
        out["action"] = value
    if decision:
        out["decision"] = decision
    if value := fields.get("retry"):
        out["retry"] = value
    if value := fields.get("error"):
        out["error"] = value
    if (limit := fields.get("limit")) is not None:
        out["remaining"] = limit.remaining
    if value := fields.get("caller"):
        out["caller"] = _masked(value[:MAX_NUMBER])
    if value := fields.get("called"):
        out["called"] = _masked(value[:MAX_NUMBER])
    if (sid := fields.get("sid")) and SID.fullmatch(sid):
        out["sid"] = sid
    if spent := fields.get("cost"):
        out["cost_usd"] = sum(spent.values()) / 1_000_000
    if timings := fields.get("timings"):
        out["timings_ms"] = {step: round(seconds * 1000, 3) for step, seconds in timings.items()}
    return out


def _path(raw_path: str) -> str:
    path = raw_path.partition("?")[0]  # the query may carry what a webhook URL was given
    return path if len(path) <= MAX_PATH else path[:MAX_PATH] + "…"


def render(entry: Entry) -> bytes:
    """`record(entry)` as one JSON line. (Assembling the line from cached orjson fragments
    instead measured no faster on the bench, so the plain form stays.)"""
    return _dumps(record(entry))


def _dumps(out: dict[str, object]) -> bytes:
    try:
        return orjson.dumps(out) + b"\n"
    except orjson.JSONEncodeError:  # a lone surrogate (no UTF-8) from a policy's text: escape it
        return json.dumps(out, ensure_ascii=True).encode() + b"\n"


_now = time.time
# Our own numbers repeat on every call and callers call again: a bounded cache of masks.
_masked = functools.lru_cache(maxsize=4096)(mask_number)


class JsonFormatter(logging.Formatter):
    """Application log records as JSON lines, like the access log."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
