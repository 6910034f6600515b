"""A lean HTTP/1.1 keep-alive client for the one hop every `upstream` route makes.

Why not aiohttp's client here (it stays for OpenAI and Twilio REST, egress.py): forwarding a
webhook through `ClientSession.request` cost ~110 µs of CPU per request on the bench machine (a
task, a timer context, a request and a response object, a stream reader, two header multidicts),
more than the gateway's whole verify-limit-answer path. This client writes one pre-built request
(head and body in one `write`), parses the answer in `data_received` with httptools (llhttp, the
parser uvicorn and aiohttp use) and answers one Future; the deadline is one TimerHandle. What it
does not do, by design: redirects, cookies, proxies, compression (it asks for none), HTTP/2.

Safety: header values must not carry CR or LF (no header injection through a forwarded value);
the answer's size is capped; a connection is reused only after a complete answer that allows it,
and never after a timeout, a cancellation or a parse error.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

# A connection idle this long is closed rather than reused: servers close idle keep-alive
# connections on their own schedule (Node.js after 5 s), and a request written into one that is
# being closed fails in a way that is not safe to retry.
IDLE_TIMEOUT = 4.0
LIMIT_PER_ORIGIN = 100


class HopFailure(Exception):
    """The hop failed; `reason` is one of UpstreamError's (egress.py maps it once)."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    """Where a route forwards: parsed once when its policy compiles, not per request."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as written in the request line
    authority: str  # the Host header

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        host = parts.hostname
        authority = parts.netloc.rpartition("@")[2]
        return cls(scheme, host, port, path, authority)

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def request_head(method: str, target: Target, path: str, headers: Iterable[tuple[str, str]], length: int) -> bytes:
    """The request line and headers, ready to write. Raises ValueError on a CR or LF in a name
    or value: a forwarded value must never start a header (or a request) of its own."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {target.authority}\r\nContent-Length: {length}\r\n"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} has a line break or a colon where it must not")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # as received; names in their own case
    body: bytes

    def header(self, name: bytes) -> str:
        """The first value of a header (name in lower case), or ''."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time, answered through a Future."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.max_body = 0
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.idle_since = 0.0
        self.open = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.close()  # bytes nobody asked for: the connection is not ours to trust
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(HopFailure("invalid", f"malformed HTTP answer: {type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool.forget(self)
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and self.status >= 200 and not self._framed():
            self.finish(keep=False)  # an answer with no length ends when the connection does
        else:
            self.fail(HopFailure("connection", "connection closed before a complete answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.chunks = []
        self.size = 0
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        for name, value in self.headers:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.max_body:
                self.fail(HopFailure("too_large", f"{int(value)} bytes", self.status))
                return

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self.fail(HopFailure("too_large", f"over {self.max_body} bytes", self.status))
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            return  # 100 Continue, 103 Early Hints: the real answer follows on this connection
        self.finish(keep=self.parser.should_keep_alive())

    # the exchange

    def send(self, data: bytes, max_body: int, timeout: float) -> asyncio.Future[Answer]:
        assert self.transport is not None
        loop = self.pool.loop
        self.waiter = waiter = loop.create_future()
        self.max_body = max_body
        self.status = 0
        self.headers_done = False
        self.timer = loop.call_later(timeout, self.on_timeout, timeout)
        self.transport.write(data)
        return waiter

    def on_timeout(self, timeout: float) -> None:
        self.timer = None
        self.fail(HopFailure("timeout", f"no answer within {timeout:.3f}s"))

    def finish(self, keep: bool) -> None:
        waiter = self.waiter
        self._stop_timer()
        self.waiter = None
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self.status, self.headers, body))
        self.chunks = []
        if keep and self.open:
            self.pool.put_back(self)
        else:
            self.close()

    def fail(self, error: HopFailure) -> None:
        """The exchange is over and the connection unusable (bytes may still be on their way)."""
        waiter = self.waiter
        self._stop_timer()
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.open = False
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def _framed(self) -> bool:
        """Whether the answer said where it ends (Content-Length or chunked)."""
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                return True
        return False

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Pool:
    """Keep-alive connections to one origin: the idle ones reused newest first, at most `limit`
    open; beyond it, an exchange waits for one to come back (within its own timeout)."""

    def __init__(
        self,
        origin: tuple[str, str, int],
        loop: asyncio.AbstractEventLoop,
        tls: ssl.SSLContext | None,
        limit: int = LIMIT_PER_ORIGIN,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.scheme, self.host, self.port = origin
        self.loop = loop
        self.clock = clock if clock is not None else loop.time  # idle ages only (tests inject)
        self.tls = tls
        self.limit = limit
        self.idle: list[_Connection] = []
        self.members: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def exchange(self, head: bytes, body: bytes, within: float, max_body: int) -> Answer:
        """One request and its answer within `within` seconds (connecting included).

        Raises HopFailure: "connect" means nothing was sent (the one failure safe to retry)."""
        loop = self.loop
        started = loop.time()
        connection = self._reusable()
        if connection is None:
            connection = await self._open(within)
            within -= loop.time() - started
            if within <= 0:
                connection.close()
                raise HopFailure("timeout", "no time left after connecting")
        waiter = connection.send(head + body if len(body) < 16384 else head, max_body, within)
        if len(body) >= 16384:
            assert connection.transport is not None
            connection.transport.write(body)  # a big body goes as it is, not copied into the head
        try:
            return await waiter
        except asyncio.CancelledError:
            connection.close()  # half an exchange: the connection cannot serve another
            raise

    def put_back(self, connection: _Connection) -> None:
        connection.idle_since = self.clock()
        self.idle.append(connection)
        self._wake()

    def forget(self, connection: _Connection) -> None:
        if connection in self.members:
            self.members.discard(connection)
            if connection in self.idle:
                self.idle.remove(connection)
            self._wake()

    def close(self) -> None:
        for connection in list(self.members):
            connection.close()

    def _reusable(self) -> _Connection | None:
        now = self.clock()
        while self.idle:
            connection = self.idle.pop()
            if connection.open and now - connection.idle_since < IDLE_TIMEOUT:
                return connection
            connection.close()
        return None

    async def _open(self, within: float) -> _Connection:
        deadline = self.loop.time() + within
        while len(self.members) >= self.limit:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise HopFailure("timeout", f"all {self.limit} connections busy") from None
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            reused = self._reusable()
            if reused is not None:
                return reused
        connection = _Connection(self)
        self.members.add(connection)
        try:
            async with asyncio.timeout_at(deadline):
                await self.loop.create_connection(
                    lambda: connection,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                )
        except TimeoutError:
            self.forget(connection)
            raise HopFailure("connect", f"no connection within {within:.3f}s") from None
        except (OSError, ssl.SSLError) as exc:
            self.forget(connection)
            raise HopFailure("connect", type(exc).__name__) from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Hop:
    """The pools of every origin the app's routes forward to, closed with the app."""

    def __init__(
        self,
        limit: int = LIMIT_PER_ORIGIN,
        clock: Callable[[], float] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._limit = limit
        self._clock = clock
        self._tls = tls  # None: the system's trust store, built on first https use

    async def exchange(self, target: Target, head: bytes, body: bytes, within: float, max_body: int) -> Answer:
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pool(target)
        return await pool.exchange(head, body, within, max_body)

    def connections(self, target: Target) -> int:
        """Open connections to the target's origin (idle or busy)."""
        pool = self._pools.get(target.origin)
        return 0 if pool is None else len(pool.members)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, target: Target) -> Pool:
        tls = None
        if target.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()  # ~ms to build: once, on first use
            tls = self._tls
        pool = Pool(target.origin, asyncio.get_running_loop(), tls, self._limit, self._clock)
        self._pools[target.origin] = pool
        return pool
