"""`serve --workers 2`: /metrics on whichever worker answers reports the whole server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import GatewayProcess
from tests.support.twilio import signed_form, voice_params

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TOKEN = "metrics-test-token-0000000000000001"
ACCOUNT = "AC" + "8" * 32
NUMBER = "+15558880002"
POLICY = f"""\
twilio: {{account_sid: {ACCOUNT}, auth_token_env: METRICS_TEST_TOKEN}}
numbers: ["{NUMBER}"]
limits:
  voice: {{rate: 10000, per: second, burst: 10000}}
routes:
  - match: {{kind: voice}}
    say: {{text: "counted", hangup: false}}
"""
SENT = 200
SCRAPES = 10
EXIT_TIMEOUT = 20.0
# The recorder counts ended requests every ~20 ms: polled this many times at most (each scrape is
# a request answered, which paces the loop), the count must have caught up.
CATCH_UP_SCRAPES = 2000


Start = Callable[..., GatewayProcess]


@pytest.fixture
def start(tmp_path: Path, redis_url: str) -> Iterator[Start]:
    """Starts `serve --workers 2` on Redis, both workers listening; its temporary files (the metrics
    directory) under tmp_path/tmp. Stopped after the test."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "metered.yaml").write_text(POLICY)
    (tmp_path / "tmp").mkdir()
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        env = {"METRICS_TEST_TOKEN": TOKEN, "TMPDIR": str(tmp_path / "tmp"), **env}
        process = GatewayProcess(policies, env, ["--limiter", redis_url, "--workers", "2"])
        started.append(process)
        process.wait_ready()
        process.wait_output("serving on", count=2)
        return process

    yield start
    for process in started:
        process.stop()


def _fresh() -> aiohttp.ClientSession:
    """A session opening a new connection per request: SO_REUSEPORT spreads connections, not requests."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _send(base: str, count: int) -> None:
    async def one(session: aiohttp.ClientSession, i: int) -> None:
        params = voice_params(to=NUMBER, AccountSid=ACCOUNT, CallSid=f"CA{i:032x}")
        head, body = signed_form(TOKEN, base + "/twilio/voice", params)
        async with session.post(base + "/twilio/voice", data=body, headers=head) as response:
            assert response.status == 200
            assert "counted" in await response.text()

    async with _fresh() as session:
        await asyncio.gather(*(one(session, i) for i in range(count)))


def _requests_total(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "switchyard_requests_total"
    )


async def _scrapes(base: str) -> list[float]:
    """Waits until /metrics counts SENT requests, then SCRAPES more totals, each a new connection."""
    async with _fresh() as session:

        async def scrape() -> str:
            async with session.get(base + "/metrics") as response:
                assert response.status == 200
                return await response.text()

        for _ in range(CATCH_UP_SCRAPES):
            if _requests_total(await scrape()) >= SENT:
                break
        return [_requests_total(await scrape()) for _ in range(SCRAPES)]


def _worker_totals(directory: Path) -> dict[int, float]:
    """switchyard_requests_total as each worker's own file has it, by pid."""
    totals: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        merged = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        totals[pid] = sum(s.value for m in merged for s in m.samples if s.name == "switchyard_requests_total")
    return totals


def test_metrics_sum_every_worker(start: Start, tmp_path: Path) -> None:
    """Requests spread over two workers; every scrape, whichever worker answers it, counts them all."""
    gateway = start()
    asyncio.run(_send(gateway.base, SENT))
    totals = asyncio.run(_scrapes(gateway.base))
    assert totals == [SENT] * SCRAPES
    (directory,) = (tmp_path / "tmp").glob("switchyard-metrics-*")
    per_worker = _worker_totals(directory)
    assert len(per_worker) == 2 and gateway.proc.pid not in per_worker  # the supervisor writes no file
    assert all(total > 0 for total in per_worker.values()), per_worker  # both workers answered some
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in directory.iterdir()}
    assert pids == set(per_worker)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0
    assert not directory.exists()  # removed at exit


def test_each_worker_heartbeats_under_its_own_instance_id(start: Start, redis_url: str) -> None:
    """SWITCHYARD_INSTANCE_ID=gw with two workers: the instance registry holds gw-0 and gw-1."""
    start(SWITCHYARD_INSTANCE_ID="gw")
    with redis.Redis.from_url(redis_url) as client:
        members = {member.decode() for member in client.zrange("sy:instances", 0, -1)}
    assert members == {"gw-0", "gw-1"}
