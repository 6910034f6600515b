"""Hardening of the webhook path: bounded logs, truthful access lines, retry tokens bound to
their request, and a call-out's fallback taken from the request's own policy snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from typing import Any

import orjson
import pytest

from gateway.actions import Incoming, Tools
from gateway.deadline import ANSWER_MARGIN, Deadline
from gateway.errors import UpstreamError
from gateway.exchange import Exchange
from gateway.handlers import twilio as twilio_handler
from gateway.keys import SERVICES
from gateway.policy.registry import PolicySet
from gateway.telemetry import accesslog
from tests.support.gateway import PUBLIC, Client, MakeClient, post
from tests.support.twilio import ACME_NUMBER, ACME_TOKEN, BISTRO_NUMBER, BISTRO_TOKEN, signed_form, voice_params

IDEMPOTENCY = "I-Twilio-Idempotency-Token"


@pytest.fixture(autouse=True)
def _no_earlier_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """Lines another test left in the process's buffer are written and dropped before this one."""
    accesslog.flush()
    capfd.readouterr()


async def voice_lines(
    gateway: Client, capfd: pytest.CaptureFixture[str], wait: float = 0.0, path: str = "/twilio/voice"
) -> list[dict[str, Any]]:
    """The webhook's access lines, once there are any: each poll is one more request to the
    server (its handler ran after the webhook's), plus `wait` of real time for a timer under test."""
    for _ in range(200):
        await gateway.get("/healthz")
        lines = [r for r in access_lines(capfd) if r["path"] == path]
        if lines:
            return lines
        if wait:
            await asyncio.sleep(wait)
    return []


def access_lines(capfd: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The access-log lines written so far (flushed first: they are buffered per loop tick)."""
    accesslog.flush()
    out = capfd.readouterr().out
    return [orjson.loads(line) for line in out.splitlines() if line.startswith('{"ts"') and '"method"' in line]


async def test_unsigned_megabyte_fields_stay_out_of_the_log(
    gateway: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An unsigned POST with a 400 KB CallSid, From and To writes a short access line and no field of it."""
    huge = "A" * 400_000
    params = {**voice_params(), "CallSid": "CA" + huge, "From": "+1" + huge}
    head, body = signed_form("not-the-token", PUBLIC + "/twilio/voice", params)
    caplog.set_level(logging.INFO)
    response = await gateway.post("/twilio/voice", data=io.BytesIO(body), headers=head)
    assert response.status == 403
    await gateway.get("/healthz")
    lines = access_lines(capfd)
    line = next(r for r in lines if r["path"] == "/twilio/voice")
    assert line["decision"] == "forged"
    assert "sid" not in line
    assert len(orjson.dumps(line)) < 512
    assert all(len(record.getMessage()) < 512 for record in caplog.records)


async def test_sid_is_logged_only_with_a_sids_shape(gateway: Client, capfd: pytest.CaptureFixture[str]) -> None:
    """A CallSid shaped like one (CA + 32 hex) is logged; a signed but odd-shaped one is not."""
    good = voice_params(CallSid="CA" + "0123456789abcdef" * 2)
    odd = voice_params(CallSid="CA<script>")
    assert (await post(gateway, "/twilio/voice", good, ACME_TOKEN))[0] == 200
    assert (await post(gateway, "/twilio/voice", odd, ACME_TOKEN))[0] == 200
    await gateway.get("/healthz")
    sids = [r.get("sid") for r in access_lines(capfd) if r["path"] == "/twilio/voice"]
    assert sids == ["CA" + "0123456789abcdef" * 2, None]


async def test_client_gone_mid_body_is_one_truthful_line(
    gateway: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up mid-body gets one access line, status 499 client_closed, no traceback."""
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", voice_params())
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    # Expect: 100-continue makes the server say when the request is being handled, so the hang-up
    # comes while the handler waits for the body (as a caller's does), not before it started.
    writer.write(
        f"POST /twilio/voice HTTP/1.1\r\nHost: gw.test\r\n{lines}Content-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
    writer.write(body[: len(body) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    records = await voice_lines(gateway, capfd)
    assert len(records) == 1
    assert records[0]["status"] == 499
    assert records[0]["decision"] == "client_closed"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("limiter", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_retry_token_is_bound_to_its_request(
    make_gateway: MakeClient, limiter: str, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    """Once the bucket is empty, the same signed request with its token replays free; another request
    with that token is refused (charged like any other) and logged as a mismatch."""
    url = "memory://" if limiter == "memory" else request.getfixturevalue("redis_url")
    gateway = await make_gateway(limiter_url=url)
    first = voice_params(to=BISTRO_NUMBER, CallSid="CA" + "1" * 32)
    status, text = await post(gateway, "/twilio/voice", first, BISTRO_TOKEN, **{IDEMPOTENCY: "tok-1"})
    assert status == 200 and "<Say" in text
    for i in range(9):  # bistro's webhooks bucket holds 10: empty it
        other = voice_params(to=BISTRO_NUMBER, CallSid=f"CA{i:032x}")
        await post(gateway, "/twilio/voice", other, BISTRO_TOKEN, **{IDEMPOTENCY: f"fill-{i}"})
    replay = await post(gateway, "/twilio/voice", first, BISTRO_TOKEN, **{IDEMPOTENCY: "tok-1"})
    assert "<Say" in replay[1], "Twilio's retry of the admitted request is answered, not charged"
    another = voice_params(to=BISTRO_NUMBER, CallSid="CA" + "2" * 32)
    reused = await post(gateway, "/twilio/voice", another, BISTRO_TOKEN, **{IDEMPOTENCY: "tok-1"})
    assert "<Reject" in reused[1], "a different request reusing the token is charged: the bucket is empty"
    await gateway.get("/healthz")
    retries = [r.get("retry") for r in access_lines(capfd) if r["path"] == "/twilio/voice"]
    assert retries[-2:] == ["replay", "mismatch"]


@pytest.mark.parametrize("limiter", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_token_that_is_not_printable_ascii_counts_as_none(
    make_gateway: MakeClient, limiter: str, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    """An idempotency token with a byte that is not UTF-8 (the header is not signed: a replay may
    carry anything) is no token: the call-out's webhook is answered, not a 5xx or a traceback."""
    url = "memory://" if limiter == "memory" else request.getfixturevalue("redis_url")
    gateway = await make_gateway(limiter_url=url)
    call = _Scripted(reply=b"<Response><Say>from upstream</Say></Response>")
    gateway.app[SERVICES].registry.current = _with_call(gateway, call, b"<Response/>")
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", voice_params())
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    writer.write(
        f"POST /twilio/voice HTTP/1.1\r\nHost: gw.test\r\n{lines}Content-Length: {len(body)}\r\n".encode()
        + b"I-Twilio-Idempotency-Token: tok-\xff\xfe\r\nConnection: close\r\n\r\n"
        + body
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"from upstream" in answer
    assert len(call.seen) == 1


class _Scripted:
    """A call-out action for tests: answers, fails, or swaps the policy set mid-call."""

    def __init__(self, reply: bytes | None = None, error: Exception | None = None) -> None:
        self.reply, self.error = reply, error
        self.during: list[Any] = []
        self.seen: list[tuple[Exchange, Incoming, Deadline]] = []

    async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
        self.seen.append((exchange, incoming, deadline))
        for step in self.during:
            step()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def _with_call(gateway: Client, call: _Scripted, fallback: bytes) -> PolicySet:
    """The current policy set with acme's first voice route turned into `call`, its fallback `fallback`."""
    registry = gateway.app[SERVICES].registry
    acme = registry.current.tenants["acme-health"]
    routes = list(acme.routes)
    index = next(i for i, r in enumerate(routes) if r.kind == "voice" and r.to is None)
    routes[index] = dataclasses.replace(routes[index], reply=None, call=call, fallback=fallback)
    tenants = {**registry.current.tenants, "acme-health": dataclasses.replace(acme, routes=tuple(routes))}
    return PolicySet.of(tenants)


async def test_call_out_answers_its_reply_with_the_request(gateway: Client) -> None:
    """An action that calls out gets the verified request (URL, params, Twilio headers) and a deadline."""
    call = _Scripted(reply=b"<Response><Say>from upstream</Say></Response>")
    registry = gateway.app[SERVICES].registry
    registry.current = _with_call(gateway, call, b"<Response/>")
    status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN, **{IDEMPOTENCY: "t-1"})
    assert (status, text) == (200, "<Response><Say>from upstream</Say></Response>")
    exchange, incoming, deadline = call.seen[0]
    assert incoming.url == PUBLIC + "/twilio/voice"
    assert incoming.params["To"] == [ACME_NUMBER]
    assert incoming.headers[IDEMPOTENCY] == "t-1"
    assert exchange.verified and exchange.tenant_id == "acme-health"
    assert deadline.remaining() == pytest.approx(exchange.budget)  # the test's clock stands still


async def test_failed_call_out_answers_the_fallback_of_its_own_snapshot(
    gateway: Client, capfd: pytest.CaptureFixture[str]
) -> None:
    """A call-out that fails mid-request gets the fallback of the policy the request began with,
    even though a reload swapped the policy set meanwhile."""
    call = _Scripted(error=UpstreamError("upstream acme", "timeout"))
    registry = gateway.app[SERVICES].registry
    registry.current = _with_call(gateway, call, b"<Response><Say>old fallback</Say></Response>")
    newer = _with_call(gateway, _Scripted(), b"<Response><Say>new fallback</Say></Response>")

    def reload() -> None:
        registry.current = newer

    call.during.append(reload)
    status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    assert (status, text) == (200, "<Response><Say>old fallback</Say></Response>")
    await gateway.get("/healthz")
    line = next(r for r in access_lines(capfd) if r["path"] == "/twilio/voice")
    assert (line["decision"], line["error"], line["status"]) == ("fallback", "timeout", 200)


async def _raw_post(
    gateway: Client, head: dict[str, str], body: bytes, extra: str = "", path: str = "/twilio/voice"
) -> asyncio.StreamWriter:
    """Send a webhook's head (and `body`) on a raw socket; returns the writer, left open."""
    assert gateway.server.port is not None
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: gw.test\r\n{lines}{extra}\r\n".encode() + body)
    await writer.drain()
    return writer


async def test_malformed_body_is_400_without_traceback(
    gateway: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A gzip-labelled body that is not gzip gets 400 with a fixed text and a `malformed` line; the
    handler logs no traceback (aiohttp's own lingering read is the server's: test_malformed.py)."""
    head, body = signed_form("not-the-token", PUBLIC + "/twilio/voice", voice_params())
    writer = await _raw_post(gateway, head, body, f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n")
    try:
        lines = await voice_lines(gateway, capfd)
        assert [(r["status"], r["decision"]) for r in lines] == [(400, "malformed")]
    finally:
        writer.close()
    ours = [r for r in caplog.records if r.name.startswith("switchyard") and (r.levelno >= logging.ERROR or r.exc_info)]
    assert not ours


async def test_a_body_that_never_arrives_times_out(
    gateway: Client, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head whose body stops half-way holds the handler only until the body timeout: 408."""
    monkeypatch.setattr(twilio_handler, "BODY_TIMEOUT", 0.05)
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", voice_params())
    writer = await _raw_post(gateway, head, body[:10], f"Content-Length: {len(body)}\r\n")
    try:
        lines = await voice_lines(gateway, capfd, wait=0.01)  # the real timer under test needs real time
        assert [(r["status"], r["decision"]) for r in lines] == [(408, "body_timeout")]
    finally:
        writer.close()


async def test_a_slow_body_is_spent_from_the_tenants_own_timeout(
    gateway: Client, capfd: pytest.CaptureFixture[str]
) -> None:
    """On /t/<tenant>/voice the tenant's webhook_timeout bounds the request from its start, body
    read included: a body that stalls is cut at that (here 50 ms), not at the 5 s body timeout."""
    registry = gateway.app[SERVICES].registry
    acme = registry.current.tenants["acme-health"]
    quick = dataclasses.replace(acme, webhook_timeout=ANSWER_MARGIN + 0.05)
    registry.current = PolicySet.of({**registry.current.tenants, "acme-health": quick})
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/t/acme-health/voice", voice_params())
    path = "/t/acme-health/voice"
    writer = await _raw_post(gateway, head, body[:10], f"Content-Length: {len(body)}\r\n", path)
    try:
        # Polled for at most 2 s of real time: the 5 s body timeout would leave no line yet.
        lines = await voice_lines(gateway, capfd, wait=0.01, path=path)
        assert [(r["status"], r["decision"]) for r in lines] == [(408, "body_timeout")]
    finally:
        writer.close()


async def test_client_gone_during_a_call_out_is_499(gateway: Client, capfd: pytest.CaptureFixture[str]) -> None:
    """A caller that hangs up while its call-out runs gets a 499 line, not a 200 nobody received."""
    release = asyncio.Event()
    call = _Scripted(reply=b"<Response/>")
    registry = gateway.app[SERVICES].registry
    registry.current = _with_call(gateway, call, b"<Response/>")
    original = call.run

    async def slow(exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
        await release.wait()
        return await original(exchange, incoming, deadline, tools)

    call.run = slow  # type: ignore[method-assign]
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", voice_params())
    writer = await _raw_post(gateway, head, body, f"Content-Length: {len(body)}\r\n")
    for _ in range(100):  # the request reached the handler and waits in its call-out
        if release.is_set() or _in_call_out(gateway):
            break
        await asyncio.sleep(0)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):  # the server has seen the hang-up
        if not _in_call_out(gateway):
            break
        await asyncio.sleep(0)
    release.set()
    assert [r["status"] for r in await voice_lines(gateway, capfd)] == [499]


def _in_call_out(gateway: Client) -> bool:
    """A connection of the server is handling a request (the test client's own are idle)."""
    runner = gateway.server.runner
    server = runner.server if runner is not None else None
    return server is not None and any(c._current_request is not None for c in server.connections)


async def test_a_call_out_that_overruns_the_deadline_gets_the_fallback(gateway: Client) -> None:
    """An action that ignores its deadline is cut at what is left of the tenant's webhook_timeout
    (counted from the request's start), and the fallback answers: in 50 ms, not Twilio's 15 s."""
    never = asyncio.Event()

    class Stuck(_Scripted):
        async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
            await never.wait()
            return b""

    registry = gateway.app[SERVICES].registry
    with_call = _with_call(gateway, Stuck(), b"<Response><Say>in time</Say></Response>")
    acme = with_call.tenants["acme-health"]
    # The fake clock stands still: what the deadline leaves is real time, 50 ms past the margin.
    quick = dataclasses.replace(acme, webhook_timeout=ANSWER_MARGIN + 0.05)
    registry.current = PolicySet.of({**with_call.tenants, "acme-health": quick})
    async with asyncio.timeout(2.0):  # the tenant's timeout ignored: Twilio's 15 s, and this fails
        status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    assert (status, text) == (200, "<Response><Say>in time</Say></Response>")


async def test_internal_failure_answers_the_fallback_of_its_own_snapshot(gateway: Client) -> None:
    """A failure outside any action (the limiter, here) answers the tenant's fallback as it was
    when the request began, though a reload swapped the policy set meanwhile."""
    registry = gateway.app[SERVICES].registry
    acme = registry.current.tenants["acme-health"]
    changed = dataclasses.replace(acme, fallback={**acme.fallback, "voice": b"<Response><Say>new</Say></Response>"})
    newer = PolicySet.of({**registry.current.tenants, "acme-health": changed})

    class Broken:
        degraded = False

        def acquire_now(self, *args: object) -> None:
            return None

        async def acquire(self, *args: object, **kwargs: object) -> None:
            registry.current = newer
            raise RuntimeError("boom")

    gateway.app[SERVICES].limits = Broken()  # type: ignore[assignment]
    status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    assert status == 200
    assert text.encode() == acme.fallback["voice"]
