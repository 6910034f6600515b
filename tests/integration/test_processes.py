"""Several gateway processes on one Redis enforce one limit together, exactly."""

from __future__ import annotations

import asyncio
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from tests.support.processes import GatewayProcess
from tests.support.redis_server import free_port
from tests.support.twilio import signed_form, voice_params

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "processes-test-token-00000000000001"
NUMBER = "+15558880001"
BURST = 30
RATE_PER_HOUR = 60
POLICY = f"""\
twilio: {{account_sid: AC{"7" * 32}, auth_token_env: PROCESS_TEST_TOKEN}}
numbers: ["{NUMBER}"]
limits:
  voice: {{rate: {RATE_PER_HOUR}, per: hour, burst: {BURST}}}
routes:
  - match: {{kind: voice}}
    say: {{text: "admitted", hangup: false}}
"""
ENV = {"PROCESS_TEST_TOKEN": TOKEN}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "shared.yaml").write_text(POLICY)
    return directory


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    processes: list[GatewayProcess] = []
    yield processes
    for process in processes:
        process.stop()


async def storm(bases: list[str], per_target: int) -> list[str]:
    """`per_target` signed calls to each base URL, all at once; the first verb of each answer."""

    async def one(session: aiohttp.ClientSession, base: str, i: int) -> str:
        params = voice_params(to=NUMBER, AccountSid="AC" + "7" * 32, CallSid=f"CA{i:032d}")
        head, body = signed_form(TOKEN, base + "/twilio/voice", params)
        async with session.post(base + "/twilio/voice", data=body, headers=head) as response:
            assert response.status == 200
            return ET.fromstring(await response.text())[0].tag

    async with aiohttp.ClientSession() as session:
        calls = [one(session, base, i) for i in range(per_target) for base in bases]
        return list(await asyncio.gather(*calls))


def allowance(elapsed: float) -> int:
    """What the bucket may refill while the storm runs: the only slack an exact limit has."""
    return math.floor(elapsed * RATE_PER_HOUR / 3600) + 1


def test_three_instances_admit_exactly_one_burst(policies: Path, redis_url: str, started: list[GatewayProcess]) -> None:
    """Three gateway processes on one Redis, 90 concurrent calls spread over them: one burst is admitted."""
    for _ in range(3):
        started.append(GatewayProcess(policies, ENV, ["--limiter", redis_url]))
    for process in started:
        process.wait_ready()
    begin = time.monotonic()
    answers = asyncio.run(storm([p.base for p in started], BURST))
    elapsed = time.monotonic() - begin
    admitted = answers.count("Say")
    assert answers.count("Say") + answers.count("Reject") == 3 * BURST
    assert BURST <= admitted < BURST + allowance(elapsed)


def test_workers_share_one_port_and_one_limit(policies: Path, redis_url: str, started: list[GatewayProcess]) -> None:
    """`--workers 3` runs three processes on one port, each heartbeating, together admitting one burst."""
    port = free_port()
    started.append(GatewayProcess(policies, ENV, ["--limiter", redis_url, "--workers", "3"], port=port))
    started[0].wait_ready()
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    while client.zcard("sy:instances") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # workers start one by one; each registers itself once it is up
    assert client.zcard("sy:instances") == 3
    begin = time.monotonic()
    answers = asyncio.run(storm([started[0].base], 3 * BURST))
    elapsed = time.monotonic() - begin
    admitted = answers.count("Say")
    assert BURST <= admitted < BURST + allowance(elapsed)


def test_workers_with_memory_limiter_are_refused(policies: Path, started: list[GatewayProcess]) -> None:
    """`--workers 2` with memory:// would double every quota: it exits 2 and says why."""
    process = GatewayProcess(policies, ENV, ["--workers", "2"])
    started.append(process)
    assert process.proc.wait(20) == 2
    assert "multiplying every tenant's quota" in process.output()
