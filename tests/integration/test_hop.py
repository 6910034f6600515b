"""The lean upstream client (gateway/hop.py) against real sockets on 127.0.0.1: a raw server
that answers exactly the bytes a test gives it, so framing, keep-alive and failures are exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.hop import Answer, Hop, HopFailure, Target, request_head
from tests.support.clock import FakeClock
from tests.support.redis_server import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 11\r\n\r\n<Response/>"

Script = Callable[[int, bytes], bytes | None]  # (request number, request bytes) -> answer; None: none


class RawServer:
    """Reads each request (head + Content-Length body) and writes what `script` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.close_after = False  # close the connection after each answer
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def target(self, path: str = "/twilio/voice") -> Target:
        return Target.parse(f"http://127.0.0.1:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                self.arrived.set()
                answer = self.script(len(self.requests), request)
                if answer is None:
                    await asyncio.Event().wait()  # never answers (cancelled at cleanup)
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


Raw = Callable[[Script], RawServer]


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    servers: list[RawServer] = []

    def make(script: Script) -> RawServer:
        server = RawServer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
async def hop() -> AsyncIterator[Hop]:
    client = Hop()
    yield client
    client.close()


def head_for(target: Target, body: bytes = b"a=1", headers: list[tuple[str, str]] | None = None) -> bytes:
    return request_head("POST", target, target.path, headers or [("Content-Type", "text/plain")], len(body))


async def send(hop: Hop, target: Target, body: bytes = b"a=1", within: float = 2.0, max_body: int = 1024) -> Answer:
    return await hop.exchange(target, head_for(target, body), body, within, max_body)


async def test_request_is_written_as_given_and_connection_reused(raw: Raw, hop: Hop) -> None:
    """The request line, Host, Content-Length, the headers and the body arrive as built; a second
    exchange reuses the keep-alive connection."""
    server = raw(lambda n, request: OK)
    await server.start()
    target = server.target("/hook?x=1")
    headers = [("X-Twilio-Signature", "abc="), ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")]
    head = request_head("POST", target, target.path, headers, 3)
    first = await hop.exchange(target, head, b"a=1", 2.0, 1024)
    second = await hop.exchange(target, head, b"a=1", 2.0, 1024)
    assert (first.status, first.body, first.header(b"content-type")) == (200, b"<Response/>", "text/xml")
    assert second.body == b"<Response/>"
    assert server.connections == 1 and hop.connections(target) == 1
    assert (
        server.requests[0]
        == (
            f"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 3\r\n"
            f"X-Twilio-Signature: abc=\r\ntraceparent: 00-{'1' * 32}-{'2' * 16}-01\r\n\r\na=1"
        ).encode()
    )


async def test_chunked_answer_is_assembled(raw: Raw, hop: Hop) -> None:
    """A chunked answer is joined, and the connection stays usable after it."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n<Resp\r\n6\r\nonse/>\r\n0\r\n\r\n"
    server = raw(lambda n, request: chunked)
    await server.start()
    assert (await send(hop, server.target())).body == b"<Response/>"
    assert (await send(hop, server.target())).body == b"<Response/>"
    assert server.connections == 1


async def test_answer_without_length_ends_with_the_connection(raw: Raw, hop: Hop) -> None:
    """No Content-Length and not chunked: the body is what came before the close, and the
    connection is not kept."""
    server = raw(lambda n, request: b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<Response/>")
    server.close_after = True
    await server.start()
    answer = await send(hop, server.target())
    assert answer.body == b"<Response/>"
    assert hop.connections(server.target()) == 0


async def test_interim_100_continue_is_skipped(raw: Raw, hop: Hop) -> None:
    """A 1xx before the answer is not the answer."""
    server = raw(lambda n, request: b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    await server.start()
    answer = await send(hop, server.target())
    assert (answer.status, answer.body) == (200, b"<Response/>")


async def test_error_status_is_an_answer(raw: Raw, hop: Hop) -> None:
    """A 500 is returned with its status (the caller decides), not raised."""
    server = raw(lambda n, request: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
    await server.start()
    answer = await send(hop, server.target())
    assert (answer.status, answer.body) == (500, b"oops")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n" * 2,
    ],
    ids=["content-length", "chunked"],
)
async def test_answer_over_the_cap_is_refused_and_connection_dropped(raw: Raw, hop: Hop, answer: bytes) -> None:
    """Over max_body (stated or counted) → too_large, and the connection is not reused."""
    server = raw(lambda n, request: answer)
    await server.start()
    with pytest.raises(HopFailure) as failure:
        await send(hop, server.target(), max_body=1000)
    assert failure.value.reason == "too_large" and failure.value.status == 200
    assert hop.connections(server.target()) == 0


async def test_no_answer_times_out_and_drops_the_connection(raw: Raw, hop: Hop) -> None:
    """A runtime that never answers gives `timeout` after the timeout, not later; the
    connection (its answer may still come) is closed, and the next exchange opens another."""
    server = raw(lambda n, request: None if n == 1 else OK)
    await server.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(HopFailure) as failure:
        await send(hop, server.target(), within=0.1)
    assert failure.value.reason == "timeout"
    assert 0.1 <= loop.time() - started < 1.0
    assert hop.connections(server.target()) == 0
    assert (await send(hop, server.target())).body == b"<Response/>"
    assert server.connections == 2


async def test_malformed_answer_is_invalid(raw: Raw, hop: Hop) -> None:
    """Bytes that are not HTTP → `invalid`, and the connection is dropped."""
    server = raw(lambda n, request: b"SMTP ready\r\n\r\n")
    await server.start()
    with pytest.raises(HopFailure) as failure:
        await send(hop, server.target())
    assert failure.value.reason == "invalid"
    assert hop.connections(server.target()) == 0


async def test_close_before_a_complete_answer_is_a_connection_failure(raw: Raw, hop: Hop) -> None:
    """Half an answer then a close → `connection` (not retried: the request was sent)."""
    server = raw(lambda n, request: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n<Resp")
    server.close_after = True
    await server.start()
    with pytest.raises(HopFailure) as failure:
        await send(hop, server.target())
    assert failure.value.reason == "connection"


async def test_nothing_listening_is_a_connect_failure(hop: Hop) -> None:
    """A refused connection → `connect`: nothing was sent, the one failure safe to retry."""
    target = Target.parse(f"http://127.0.0.1:{free_port()}/x")
    with pytest.raises(HopFailure) as failure:
        await send(hop, target)
    assert failure.value.reason == "connect"


async def test_idle_connection_past_its_age_is_not_reused(raw: Raw) -> None:
    """A connection idle longer than IDLE_TIMEOUT is closed, not written into (a server may be
    closing it at that very moment); a fresh one serves the request."""
    clock = FakeClock()
    hop = Hop(clock=clock)
    server = raw(lambda n, request: OK)
    await server.start()
    try:
        await send(hop, server.target())
        clock.advance(1.0)
        await send(hop, server.target())
        assert server.connections == 1
        clock.advance(10.0)
        await send(hop, server.target())
        assert server.connections == 2
    finally:
        hop.close()


async def test_connection_closed_by_the_server_while_idle_is_forgotten(raw: Raw, hop: Hop) -> None:
    """A keep-alive connection the server closes between requests leaves the pool; the next
    exchange opens a new one instead of failing."""
    server = raw(lambda n, request: OK)
    server.close_after = True  # the server closes after answering, though the answer allowed keep-alive
    await server.start()
    await send(hop, server.target())
    async with asyncio.timeout(2):
        # Waits for the kernel's EOF to reach the client, not for time to pass.
        while hop.connections(server.target()):  # noqa: ASYNC110 - the pool has no event to wait on
            await asyncio.sleep(0.01)
    assert (await send(hop, server.target())).body == b"<Response/>"
    assert server.connections == 2


async def test_over_the_connection_limit_an_exchange_waits_for_one(raw: Raw) -> None:
    """With `limit` connections busy, the next exchange waits for one to come back and reuses it."""
    hop = Hop(limit=1)
    server = raw(lambda n, request: OK)
    await server.start()
    try:
        first = asyncio.create_task(send(hop, server.target()))
        second = asyncio.create_task(send(hop, server.target()))
        answers = await asyncio.gather(first, second)
        assert [a.body for a in answers] == [b"<Response/>"] * 2
        assert server.connections == 1
    finally:
        hop.close()


async def test_cancelled_exchange_drops_its_connection(raw: Raw, hop: Hop) -> None:
    """An exchange cancelled mid-way (its caller gave up) never leaves a half-used connection."""
    server = raw(lambda n, request: None)
    await server.start()
    task = asyncio.create_task(send(hop, server.target()))
    async with asyncio.timeout(2):
        await server.arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hop.connections(server.target()) == 0


@pytest.mark.parametrize(
    ("name", "value"), [("X-A", "ok\r\nX-Injected: 1"), ("X-A", "line\nbreak"), ("X-A\r\nX-B", "v"), ("X:A", "v")]
)
def test_request_head_refuses_header_injection(name: str, value: str) -> None:
    """A CR or LF in a forwarded header (or a colon in a name) can never start a header of its own."""
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", Target.parse("http://a.example/x"), "/x", [(name, value)], 0)


def test_target_parse() -> None:
    """Ports default by scheme, the query stays on the path, the Host header is the authority."""
    plain = Target.parse("http://runtime.example/twilio/voice?a=1")
    assert (plain.scheme, plain.host, plain.port, plain.path, plain.authority) == (
        "http", "runtime.example", 80, "/twilio/voice?a=1", "runtime.example",
    )  # fmt: skip
    secure = Target.parse("https://Runtime.example:8443")
    assert (secure.port, secure.path, secure.authority) == (8443, "/", "Runtime.example:8443")
    assert secure.host == "runtime.example"
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("ftp://x.example/")


def test_exchange_on_uvloop() -> None:
    """The server runs on uvloop, whose transports are not asyncio's classes: the client works there."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> bytes:
        server = RawServer(lambda n, request: OK)
        await server.start()
        hop = Hop()
        try:
            return (await send(hop, server.target())).body + (await send(hop, server.target())).body
        finally:
            hop.close()
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == b"<Response/>" * 2
