"""The outbound seam against a real HTTP server on 127.0.0.1: replies, and every failure mapped
once to UpstreamError with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.deadline import ANSWER_MARGIN, Deadline
from gateway.egress import Egress, open_session
from gateway.errors import UpstreamError
from tests.support.clock import FakeClock
from tests.support.redis_server import free_port


class Upstream:
    """A runtime stand-in: answers TwiML, an error, a huge body, or never (until released)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.release = asyncio.Event()
        self.first_piece_sent = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path, body, dict(request.headers)))
        if request.path == "/twiml":
            return web.Response(body=b"<Response/>", content_type="text/xml")
        if request.path == "/error":
            return web.Response(status=503, text="down")
        if request.path == "/huge":
            return web.Response(body=b"x" * 2048)
        if request.path == "/slow-pieces":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"<Response><Say>part one")
            self.first_piece_sent.set()
            await self.release.wait()
            await response.write(b" part two</Say></Response>")
            await response.write_eof()
            return response
        if request.path == "/huge-chunked":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(4):
                await response.write(b"y" * 1024)
            await response.write_eof()
            return response
        await self.release.wait()  # /hang
        return web.Response(text="late")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    stand_in = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", stand_in.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield stand_in, f"http://127.0.0.1:{server.port}"
    finally:
        stand_in.release.set()
        await server.close()


@pytest.fixture
async def egress() -> AsyncIterator[Egress]:
    session = open_session()
    try:
        yield Egress(session)
    finally:
        await session.close()


async def test_reply_and_request_pass_through(upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock) -> None:
    """Method, headers and body reach the upstream; its status, headers and body come back."""
    stand_in, base = upstream
    reply = await egress.request(
        "POST", base + "/twiml", target="t", deadline=Deadline.after(15, clock), headers={"X-A": "1"}, body=b"k=v"
    )
    assert (reply.status, reply.body, reply.headers["Content-Type"]) == (200, b"<Response/>", "text/xml")
    assert stand_in.requests[0][:2] == ("/twiml", b"k=v")
    assert stand_in.requests[0][2]["X-A"] == "1"


async def test_error_status_is_a_reply_for_the_action_to_judge(
    upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock
) -> None:
    """A 503 is returned, not raised: whether it is a failure is the action's call."""
    reply = await egress.request("GET", upstream[1] + "/error", target="t", deadline=Deadline.after(15, clock))
    assert (reply.status, reply.body) == (503, b"down")


async def test_a_step_times_out_at_what_the_deadline_leaves(
    upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock
) -> None:
    """An upstream that never answers costs what is left of the deadline (less the margin), then
    UpstreamError(timeout)."""
    deadline = Deadline.after(ANSWER_MARGIN + 0.05, clock)  # 50 ms of the real loop's time to spend
    with pytest.raises(UpstreamError) as caught:
        await egress.request("GET", upstream[1] + "/hang", target="upstream acme", deadline=deadline)
    assert (caught.value.target, caught.value.reason) == ("upstream acme", "timeout")


async def test_a_passed_deadline_sends_nothing(
    upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock
) -> None:
    """With no time left to answer, nothing is sent: UpstreamError(deadline)."""
    deadline = Deadline.after(1.0, clock)
    clock.advance(1.0)
    with pytest.raises(UpstreamError) as caught:
        await egress.request("POST", upstream[1] + "/twiml", target="t", deadline=deadline)
    assert caught.value.reason == "deadline"
    assert upstream[0].requests == []


async def test_refused_connection_is_connect(egress: Egress, clock: FakeClock) -> None:
    """A port nobody listens on is `connect`: nothing was sent, so a caller may retry."""
    with pytest.raises(UpstreamError) as caught:
        await egress.request("GET", f"http://127.0.0.1:{free_port()}/", target="t", deadline=Deadline.after(15, clock))
    assert caught.value.reason == "connect"


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"], ids=["content-length", "chunked"])
async def test_a_body_over_the_cap_is_refused(
    upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock, path: str
) -> None:
    """An answer over max_body is too_large whether its length was announced or not."""
    with pytest.raises(UpstreamError) as caught:
        await egress.request("GET", upstream[1] + path, target="t", deadline=Deadline.after(15, clock), max_body=1024)
    assert caught.value.reason == "too_large"


async def test_a_body_in_pieces_is_read_to_its_end(
    upstream: tuple[Upstream, str], egress: Egress, clock: FakeClock
) -> None:
    """A body that arrives in several writes comes back whole, not cut at what had arrived."""
    stand_in, base = upstream
    deadline = Deadline.after(15, clock)
    call = asyncio.ensure_future(egress.request("GET", base + "/slow-pieces", target="t", deadline=deadline))
    await stand_in.first_piece_sent.wait()
    for _ in range(20):  # let the first piece reach the client before the second is written
        await asyncio.sleep(0)
    stand_in.release.set()
    reply = await call
    assert reply.body == b"<Response><Say>part one part two</Say></Response>"
