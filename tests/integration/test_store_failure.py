"""The gateway on a real Redis that dies under load: every call answered in time, by the tenant's rule."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.keys import STORES
from gateway.settings import Settings
from tests.support.clock import FakeClock
from tests.support.redis_server import RedisServer
from tests.support.twilio import signed_form, voice_params

pytestmark = pytest.mark.redis

PUBLIC = "http://gw.test"
TOKEN = "store-failure-token-000000000000001"
Client = TestClient[web.Request, web.Application]
# The limiter's deadline is 50 ms; the rest is HTTP on a shared 2-core box. A request that
# waited for a dead Redis's TCP timeout (seconds) or hung would blow far past this.
ANSWER_WITHIN = 0.5

POLICY = """\
twilio: {{account_sid: AC{sid}, auth_token_env: STORE_TEST_TOKEN}}
numbers: ["{number}"]
limits:
  voice: {{rate: 1, per: hour, burst: 4}}
  on_store_failure: {mode}
routes:
  - match: {{kind: voice}}
    say: {{text: "hello from {mode}", hangup: false}}
"""
TENANTS = {"local": "+15559990001", "open": "+15559990002", "closed": "+15559990003"}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    for i, (mode, number) in enumerate(TENANTS.items()):
        sid = f"{i + 1:032x}"
        (tmp_path / f"t-{mode}.yaml").write_text(POLICY.format(sid=sid, number=number, mode=mode))
    return tmp_path


@pytest.fixture
def make_gateway(aiohttp_client: Any, clock: FakeClock, policies: Path) -> Callable[[str], Awaitable[Client]]:
    async def make(limiter_url: str) -> Client:
        settings = Settings(policies_dir=policies, public_urls=(PUBLIC,), limiter_url=limiter_url, reload_interval=0)
        client: Client = await aiohttp_client(create_app(settings, env={"STORE_TEST_TOKEN": TOKEN}, clock=clock))
        return client

    return make


async def call(client: Client, mode: str) -> tuple[str, float]:
    """One signed call to the tenant of `mode`: its first TwiML verb, and the seconds it took."""
    params = voice_params(to=TENANTS[mode], AccountSid="AC" + "0" * 32)
    head, body = signed_form(TOKEN, PUBLIC + "/twilio/voice", params)
    started = time.perf_counter()
    response = await client.post("/twilio/voice", data=body, headers=head)
    text = await response.text()
    elapsed = time.perf_counter() - started
    assert response.status == 200, text
    return ET.fromstring(text)[0].tag, elapsed


async def burst(client: Client, mode: str, n: int) -> list[str]:
    results = await asyncio.gather(*(call(client, mode) for _ in range(n)))
    slowest = max(elapsed for _, elapsed in results)
    assert slowest < ANSWER_WITHIN, f"a call took {slowest:.3f}s"
    return [verb for verb, _ in results]


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_calls_are_answered_by_rule_while_redis_is_down(
    make_gateway: Callable[[str], Awaitable[Client]],
    redis_servers: Callable[..., RedisServer],
    clock: FakeClock,
    fault: str,
) -> None:
    """Redis stopped or frozen under load: local, open and closed tenants each answer by their rule, in time."""
    server = redis_servers()
    gateway = await make_gateway(server.url)
    assert sorted(await burst(gateway, "local", 6)) == ["Reject"] * 2 + ["Say"] * 4

    if fault == "stopped":
        server.stop()
    else:
        server.pause()
    local, opened, closed = await asyncio.gather(
        burst(gateway, "local", 20), burst(gateway, "open", 20), burst(gateway, "closed", 20)
    )
    # local: this instance alone holds the whole limit (one live instance), in its own buckets.
    assert sorted(local) == ["Reject"] * 16 + ["Say"] * 4
    assert opened == ["Say"] * 20
    assert closed == ["Reject"] * 20

    ready = await (await gateway.get("/readyz")).json()
    assert ready["status"] == "degraded"
    assert ready["limits"]["degraded"] is True
    metrics = await (await gateway.get("/metrics")).text()
    assert 'switchyard_limit_store_transitions_total{part="limits",to="degraded"} 1.0' in metrics
    assert 'switchyard_limit_store_degraded{part="limits"} 1.0' in metrics
    if fault == "frozen":
        server.resume()


async def test_shared_limits_return_after_redis_restarts(
    make_gateway: Callable[[str], Awaitable[Client]],
    redis_servers: Callable[..., RedisServer],
    clock: FakeClock,
) -> None:
    """After Redis comes back on the same port, both gateways share one bucket again, with no restart."""
    server = redis_servers()
    first = await make_gateway(server.url)
    second = await make_gateway(server.url)
    assert await burst(first, "closed", 1) == ["Say"]

    server.stop()
    assert await burst(first, "closed", 3) == ["Reject"] * 3
    server.start()
    clock.advance(2.0)  # past the circuit breaker's cool-down; the 1/hour buckets barely refill

    # Redis lost its keys with the restart: the shared bucket is full (4) again, for both gateways.
    answers = await burst(first, "closed", 3) + await burst(second, "closed", 3)
    assert sorted(answers) == ["Reject"] * 2 + ["Say"] * 4
    assert server.client().exists("sy:{t-closed}:b:voice") == 1
    ready = await (await first.get("/readyz")).json()
    assert ready["status"] == "ready"
    metrics = await (await first.get("/metrics")).text()
    assert 'switchyard_limit_store_transitions_total{part="limits",to="healthy"} 1.0' in metrics


async def test_readyz_says_degraded_from_start_up_when_redis_is_unreachable(
    make_gateway: Callable[[str], Awaitable[Client]], redis_servers: Callable[..., RedisServer]
) -> None:
    """Redis down before the gateway starts: /readyz says degraded (200) before any request has
    failed over, for limits and budget; once Redis answers, the next heartbeat makes it ready."""
    server = redis_servers()
    server.stop()
    gateway = await make_gateway(server.url)
    ready = await (await gateway.get("/readyz")).json()
    assert ready["status"] == "degraded"
    assert ready["limits"]["degraded"] is True and ready["budget"]["degraded"] is True
    server.start()
    stores = gateway.app[STORES]
    assert stores.instances is not None
    await stores.instances.beat()  # the next beat now, not in 5 s
    ready = await (await gateway.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["budget"]["degraded"] is False
