"""The JSON API: JWT auth, and 429 with draft RateLimit headers when over the `api` bucket."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.clock import FakeClock
from tests.support.twilio import ENV, NORTHWIND_JWT

POLICIES = Path(__file__).resolve().parents[2] / "policies"
Client = TestClient[web.Request, web.Application]


def token(secret: str = NORTHWIND_JWT) -> str:
    claims = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 300}
    return jwt.encode(claims, secret, algorithm="HS256")


async def _client(aiohttp_client: Any, clock: FakeClock) -> Client:
    settings = Settings(policies_dir=POLICIES, public_urls=("http://gw.test",), reload_interval=0)
    client: Client = await aiohttp_client(create_app(settings, env=ENV, clock=clock))
    return client


async def test_token_reads_limits_with_headers(aiohttp_client: Any, clock: FakeClock) -> None:
    """A valid token gets the tenant's limits and RateLimit headers counting down."""
    client = await _client(aiohttp_client, clock)
    response = await client.get("/api/v1/limits", headers={"Authorization": f"Bearer {token()}"})
    assert response.status == 200
    body = await response.json()
    assert body["tenant"] == "northwind"
    assert body["limits"]["api"] == [{"name": "api", "rate": 10.0, "per_seconds": 60.0, "burst": 5}]
    assert response.headers["RateLimit-Policy"] == '"api";q=5;w=30'
    assert response.headers["RateLimit"] == '"api";r=4;t=6'


async def test_over_the_api_bucket_is_429_with_retry_after(aiohttp_client: Any, clock: FakeClock) -> None:
    """The 6th call within the burst gets 429, Retry-After and the draft headers; refill lets one through."""
    client = await _client(aiohttp_client, clock)
    auth = {"Authorization": f"Bearer {token()}"}
    statuses = [(await client.get("/api/v1/limits", headers=auth)).status for _ in range(5)]
    assert statuses == [200] * 5
    refused = await client.get("/api/v1/limits", headers=auth)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "6"
    assert refused.headers["RateLimit"] == '"api";r=0;t=30'
    assert (await refused.json())["error"] == "rate_limited"
    clock.advance(6)
    assert (await client.get("/api/v1/limits", headers=auth)).status == 200


async def test_bad_token_is_401_and_spends_nothing(aiohttp_client: Any, clock: FakeClock) -> None:
    """Wrong-key and missing tokens get 401 and do not charge the tenant's api bucket."""
    client = await _client(aiohttp_client, clock)
    for headers in ({"Authorization": f"Bearer {token('x' * 40)}"}, {}):
        for _ in range(10):
            response = await client.get("/api/v1/limits", headers=headers)
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = await client.get("/api/v1/limits", headers={"Authorization": f"Bearer {token()}"})
    assert ok.status == 200 and ok.headers["RateLimit"].startswith('"api";r=4')


@pytest.mark.parametrize(
    ("headers", "challenge", "error"),
    [
        pytest.param({}, 'Bearer realm="switchyard"', "unauthorized", id="no-credentials"),
        pytest.param({"Authorization": "Basic dTpw"}, 'Bearer realm="switchyard"', "unauthorized", id="other-scheme"),
        pytest.param(
            {"Authorization": "Bearer not-a-jwt"},
            'Bearer realm="switchyard", error="invalid_token"',
            "invalid_token",
            id="bad-token",
        ),
    ],
)
async def test_challenge_has_an_error_only_for_a_bad_token(
    aiohttp_client: Any, clock: FakeClock, headers: dict[str, str], challenge: str, error: str
) -> None:
    """RFC 6750 §3.1: no credentials (or another scheme) get a bare challenge; a bad token gets error=."""
    client = await _client(aiohttp_client, clock)
    response = await client.get("/api/v1/limits", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert (await response.json()) == {"error": error}
