"""Media Streams across gateway processes on one Redis: one concurrent_streams limit for all of
them, a stream admitted by one and relayed by another, and a killed process's slots back once
their leases expire."""

from __future__ import annotations

import asyncio
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio
from twilio.request_validator import RequestValidator

from gateway.actions.stream import STREAMS
from gateway.limits.leases import lease_key
from gateway.protocol import media
from tests.support.media_runtime import MediaRuntime
from tests.support.processes import GatewayProcess, stopping
from tests.support.redis_server import SCRIPT_TIME_BASE
from tests.support.servers import running
from tests.support.twilio import call_form, call_sid, signed_form
from tests.support.waiting import first, until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "stream-processes-token-000000000001"
ACCOUNT = "AC" + "8" * 32
NUMBER = "+15558890001"
ENV = {"STREAM_TEST_TOKEN": TOKEN}
LIMIT = 3
LEASE_TTL = 2.0  # --stream-lease-ttl: how soon a killed process's slots come back
LATE = 5.0  # how long after its lease lapsed a slot may come back on a loaded machine (a bound, not a wait)


def _policy(upstream: str) -> str:
    return f"""\
twilio: {{account_sid: {ACCOUNT}, auth_token_env: STREAM_TEST_TOKEN}}
numbers: ["{NUMBER}"]
limits: {{concurrent_streams: {LIMIT}}}
routes:
  - name: agent
    match: {{kind: voice}}
    stream: {{upstream: "{upstream}"}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[MediaRuntime]:
    async with running(MediaRuntime(TOKEN)) as server:
        yield server


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    with stopping() as processes:
        yield processes


def _start(tmp_path: Path, runtime: MediaRuntime, started: list[GatewayProcess], n: int, args: list[str]) -> None:
    """`n` gateway processes (with `args`) on the shared tenant's policy, streaming to `runtime`; all ready."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shared.yaml").write_text(_policy(runtime.url("/agent")))
    for _ in range(n):
        started.append(GatewayProcess(policies, ENV, args))
    for process in started:
        process.wait_ready()


def _on_redis(redis_url: str) -> list[str]:
    """The flags of processes sharing their limits (and stream leases) on one Redis."""
    return ["--limiter", redis_url, "--stream-lease-ttl", str(LEASE_TTL)]


async def _answer(session: aiohttp.ClientSession, base: str, call: int) -> dict[str, str] | None:
    """A signed call to `base`: the stream's <Parameter>s, or None when it was refused."""
    params = call_form(NUMBER, call_sid(call), ACCOUNT)
    head, body = signed_form(TOKEN, base + "/twilio/voice", params)
    async with session.post(base + "/twilio/voice", data=body, headers=head) as response:
        assert response.status == 200
        stream = ET.fromstring(await response.text()).find("Connect/Stream")
    return None if stream is None else {p.get("name", ""): p.get("value", "") for p in stream}


async def _stream(
    session: aiohttp.ClientSession, base: str, call: int, params: dict[str, str]
) -> aiohttp.ClientWebSocketResponse:
    """Open the stream on `base` as Twilio does and start it."""
    url = base.replace("http://", "ws://") + "/t/shared/stream"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    ws = await session.ws_connect(url, headers={"X-Twilio-Signature": signature})
    await ws.send_str(media.start_message(_stream_sid(call), call_sid(call), ACCOUNT, params))
    return ws


def _stream_sid(call: int) -> str:
    return "MZ" + f"{call:032x}"


async def _settled(runtime: MediaRuntime, n: int) -> None:
    await until(lambda: len(runtime.connections) >= n, within=10, every=0.02)


async def _leases(redis_url: str) -> tuple[dict[str, float], float]:
    """The shared tenant's stream leases in Redis (lease id -> expiry, on Redis's clock), and that clock now."""
    async with redis.asyncio.Redis.from_url(redis_url) as client, client.pipeline(transaction=True) as pipe:
        pipe.zrange(lease_key("shared", STREAMS), 0, -1, withscores=True)
        pipe.time()
        held, (seconds, micros) = await pipe.execute()
    return {member.decode(): float(expiry) for member, expiry in held}, seconds - SCRIPT_TIME_BASE + micros / 1e6


async def test_one_limit_across_two_processes(
    tmp_path: Path, runtime: MediaRuntime, redis_url: str, started: list[GatewayProcess]
) -> None:
    """concurrent_streams 3 over two processes: 6 calls at once get exactly 3 streams; a stream
    admitted by one process is relayed by the other; when one ends, its slot serves a new call."""
    _start(tmp_path, runtime, started, 2, _on_redis(redis_url))
    a, b = (p.base for p in started)
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(_answer(session, (a, b)[i % 2], i) for i in range(6)))
        admitted = [(i, params) for i, params in enumerate(answers) if params is not None]
        assert len(admitted) == LIMIT
        # Each stream opened on the process that did NOT answer its call.
        sockets = [await _stream(session, (b, a)[i % 2], i, params) for i, params in admitted]
        await _settled(runtime, LIMIT)
        assert await _answer(session, a, 100) is None
        ended, call = sockets[0], admitted[0][0]
        await ended.send_str(media.stop_message(_stream_sid(call), 2, call_sid(call), ACCOUNT))
        await ended.receive()
        assert ended.closed or (await ended.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # The slot is given back as the stream ends, a moment after its close.
        await first(lambda: _answer(session, b, 101), within=10)
        for ws in sockets[1:]:
            await ws.close()


async def test_a_killed_process_frees_its_slots_when_their_leases_expire(
    tmp_path: Path, runtime: MediaRuntime, redis_url: str, started: list[GatewayProcess]
) -> None:
    """A process killed (SIGKILL) while relaying 3 streams gives nothing back itself; the other
    process admits new calls once those leases expire (--stream-lease-ttl), not before."""
    _start(tmp_path, runtime, started, 2, _on_redis(redis_url))
    doomed, survivor = started
    async with aiohttp.ClientSession() as session:
        sockets = []
        for i in range(LIMIT):
            params = await _answer(session, survivor.base, i)
            assert params is not None
            sockets.append(await _stream(session, doomed.base, i, params))
        await _settled(runtime, LIMIT)
        assert await _answer(session, survivor.base, 50) is None
        doomed.proc.kill()
        killed = time.monotonic()
        doomed.proc.wait()
        # Nobody renews the leases now: each lapses at its last heartbeat + TTL, on Redis's clock,
        # which is read with them and mapped onto ours (between `asked` and `told`).
        asked = time.monotonic()
        leases, now = await _leases(redis_url)
        told = time.monotonic()
        assert len(leases) == LIMIT  # the killed process's streams', and only those
        lapses_in = min(leases.values()) - now  # the first slot to come back
        assert 0 < lapses_in <= LEASE_TTL  # live at the kill, renewed no further than a TTL ahead
        await first(lambda: _answer(session, survivor.base, 51), within=LEASE_TTL + 10)
        admitted = time.monotonic()
        # Renewed every ttl/3 until the kill: the slots outlive it by at most the TTL.
        assert admitted - killed > LEASE_TTL / 3
        # Back because the lease lapsed: not before it (1 ms for the two clocks' rounding), nor long after.
        assert asked + lapses_in - 0.001 <= admitted <= told + lapses_in + LATE


async def test_sigterm_closes_open_streams_with_1001_after_the_grace_period(
    tmp_path: Path, runtime: MediaRuntime, started: list[GatewayProcess]
) -> None:
    """On SIGTERM an open stream is relayed through the grace period, then both sides are closed
    with 1001 (Twilio moves on to the fallback after </Connect>), and the process exits 0."""
    _start(tmp_path, runtime, started, 1, ["--grace-period", "0.5"])
    (gateway,) = started
    async with aiohttp.ClientSession() as session:
        params = await _answer(session, gateway.base, 1)
        assert params is not None
        ws = await _stream(session, gateway.base, 1, params)
        await _settled(runtime, 1)
        gateway.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            message = await ws.receive()
            while message.type is aiohttp.WSMsgType.TEXT:
                message = await ws.receive()
        assert ws.close_code == 1001
        (connection,) = runtime.connections
        async with asyncio.timeout(10):
            await connection.closed.wait()
        assert connection.close_code == 1001
    assert gateway.proc.wait(10) == 0
