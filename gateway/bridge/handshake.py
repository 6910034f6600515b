"""The two upgrades of a bridged stream, after which each socket is framed by bridge/side.py:

- `accept`: Twilio's upgrade, answered 101 through aiohttp's own response (so the access log and
  the span see it as any request), then the connection's bytes are taken from aiohttp's request
  handler through its `set_parser` hook, the one aiohttp's own WebSocketResponse uses;
- `dial`: the runtime's WebSocket, opened on a plain asyncio connection (TLS for wss://), the
  upgrade request written and its answer read here. A redirect is a refusal (never followed:
  the URL is the policy's alone).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import web

from gateway.bridge.side import Side
from gateway.errors import UpstreamError
from gateway.protocol.websocket import accept_key, new_key, valid_key

MAX_HEAD = 16 * 1024  # bytes of the runtime's 101 answer, at most


def is_upgrade(request: web.Request) -> bool:
    """A WebSocket upgrade this gateway can accept (RFC 6455 §4.2.1; no extensions offered
    are taken, so none is needed)."""
    headers = request.headers
    connection = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    return (
        headers.get("Upgrade", "").strip().lower() == "websocket"
        and "upgrade" in connection
        and headers.get("Sec-WebSocket-Version", "").strip() == "13"
        and valid_key(headers.get("Sec-WebSocket-Key"))
    )


class _Feed:
    """What aiohttp's request handler calls with an upgraded connection's bytes (its payload
    parser's two methods)."""

    __slots__ = ("_side",)

    def __init__(self, side: Side) -> None:
        self._side = side

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._side.feed(data)
        return False, b""

    def feed_eof(self) -> None:
        self._side.lost(None)


async def accept(request: web.Request, max_size: int) -> tuple[web.StreamResponse, Side]:
    """Answer an upgrade that `is_upgrade` allowed: 101, then Twilio's side of the stream."""
    key = request.headers["Sec-WebSocket-Key"]
    response = web.StreamResponse(
        status=101,
        headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_key(key)},
    )
    # The connection ends with the stream: aiohttp must not wait for another request on it
    # after the handler returns (it would take its keep-alive from the response, not from us).
    response.force_close()
    await response.prepare(request)
    transport, protocol = request.transport, request.protocol
    assert transport is not None, "a request being answered has its connection"
    side = Side("twilio", transport, client=False, max_size=max_size)
    protocol.set_parser(_Feed(side))  # type: ignore[arg-type]  # a WebSocketReader's two methods
    return response, side


class _Client(asyncio.Protocol):
    """The runtime's connection: the 101 answer first, then frames for the side."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._early = bytearray()  # frames that came after the 101, before start(): kept, in order
        self._lost: tuple[Exception | None] | None = None  # the connection went before start()
        self.side: Side | None = None
        self.answered: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a TCP or TLS transport

    def data_received(self, data: bytes) -> None:
        if self.side is not None:
            self.side.feed(data)
            return
        if self.answered.done():
            self._early += data
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self.answered.set_exception(ConnectionError("the upgrade's answer is too long"))
            return
        try:
            status, headers = _parse_head(self._head[:end])
        except ValueError as exc:
            self.answered.set_exception(ConnectionError(str(exc)))
            return
        self._early += self._head[end + 4 :]
        self.answered.set_result((status, headers))

    def start(self) -> Side:
        """From now on the connection carries frames (those that came already first)."""
        assert self._transport is not None
        self.side = Side("runtime", self._transport, client=True, max_size=self._max_size)
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.side.feed(early)
        if self._lost is not None:
            self.side.lost(self._lost[0])
        return self.side

    def connection_lost(self, exc: Exception | None) -> None:
        if self.side is not None:
            self.side.lost(exc)
        elif not self.answered.done():
            self.answered.set_exception(ConnectionError("closed before the upgrade's answer"))
        else:
            self._lost = (exc,)  # after the 101, before start(): the side begins ended

    def eof_received(self) -> bool | None:
        return None  # close our end too: connection_lost follows


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError("not an HTTP/1.1 answer")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError("a malformed header line")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


_tls: ssl.SSLContext | None = None


def _client_tls() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()  # ~ms to build: once, on first use
    return _tls


async def dial(url: str, headers: Mapping[str, str], *, name: str, within: float, max_size: int) -> Side:
    """The runtime's WebSocket at `url` (ws:// or wss://, from the policy), upgraded within
    `within` seconds with `headers` added; every failure raises UpstreamError (a refused
    upgrade: reason "status" with its HTTP status)."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "wss"
    host = parts.hostname
    if parts.scheme.lower() not in ("ws", "wss") or not host:
        raise UpstreamError(name, "invalid", detail="not a ws(s) URL")
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = new_key()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    for header, value in headers.items():
        if any(c in header or c in value for c in "\r\n") or ":" in header:
            raise UpstreamError(name, "invalid", detail=f"header {header!r} has a line break")
        lines.append(f"{header}: {value}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(within):
            try:
                transport, client = await loop.create_connection(
                    lambda: _Client(max_size),
                    host,
                    port,
                    ssl=_client_tls() if secure else None,
                    server_hostname=host if secure else None,
                )
            except (OSError, ssl.SSLError) as exc:
                raise UpstreamError(name, "connect", detail=type(exc).__name__) from None
            transport.write(request)
            try:
                status, answer = await client.answered
            except ConnectionError as exc:
                raise UpstreamError(name, "connection", detail=str(exc)) from None
    except TimeoutError:
        if transport is not None:
            transport.close()
        raise UpstreamError(name, "timeout", detail=f"no WebSocket within {within:.3f}s") from None
    except UpstreamError:
        if transport is not None:
            transport.close()
        raise
    if status != 101:
        transport.close()
        raise UpstreamError(name, "status", status)
    connection = {token.strip().lower() for token in answer.get("connection", "").split(",")}
    if (
        answer.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in connection
        or answer.get("sec-websocket-accept") != accept_key(key)
        or answer.get("sec-websocket-extensions")  # none was offered: none may be answered
    ):
        transport.close()
        raise UpstreamError(name, "invalid", detail="not a WebSocket upgrade")
    return client.start()
