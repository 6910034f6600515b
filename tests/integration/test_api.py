"""The JSON API: JWT auth, and 429 with draft RateLimit headers when over the `api` bucket."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.app import create_app
from gateway.auth.jwks import MIN_REFETCH
from gateway.settings import Settings
from tests.support.clock import FakeClock
from tests.support.servers import running, serve
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
    assert body["limits"]["api"] == [{"name": "api", "rate": 5.0, "per_seconds": 1.0, "burst": 10}]
    assert response.headers["RateLimit-Policy"] == '"api";q=10;w=2'
    assert response.headers["RateLimit"] == '"api";r=9;t=1'


async def test_over_the_api_bucket_is_429_with_retry_after(aiohttp_client: Any, clock: FakeClock) -> None:
    """The 11th call within the burst gets 429, Retry-After and the draft headers; refill lets one through."""
    client = await _client(aiohttp_client, clock)
    auth = {"Authorization": f"Bearer {token()}"}
    statuses = [(await client.get("/api/v1/limits", headers=auth)).status for _ in range(10)]
    assert statuses == [200] * 10
    refused = await client.get("/api/v1/limits", headers=auth)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["RateLimit"] == '"api";r=0;t=2'
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
    assert ok.status == 200 and ok.headers["RateLimit"].startswith('"api";r=9')


@pytest.mark.parametrize(
    ("headers", "challenge", "title"),
    [
        pytest.param({}, 'Bearer realm="switchyard"', "Unauthorized", id="no-credentials"),
        pytest.param({"Authorization": "Basic dTpw"}, 'Bearer realm="switchyard"', "Unauthorized", id="other-scheme"),
        pytest.param(
            {"Authorization": "Bearer not-a-jwt"},
            'Bearer realm="switchyard", error="invalid_token", error_description="malformed token"',
            "Invalid token",
            id="bad-token",
        ),
    ],
)
async def test_challenge_has_an_error_only_for_a_bad_token(
    aiohttp_client: Any, clock: FakeClock, headers: dict[str, str], challenge: str, title: str
) -> None:
    """RFC 6750 §3.1: no credentials (or another scheme) get a bare challenge; a bad token gets
    error= with a description; the body is RFC 9457 problem JSON."""
    client = await _client(aiohttp_client, clock)
    response = await client.get("/api/v1/limits", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.content_type == "application/problem+json"
    body = await response.json(content_type="application/problem+json")
    assert (body["status"], body["title"]) == (401, title)


class IdentityProvider:
    """A tenant's identity provider on 127.0.0.1: serves its JWK Set over HTTP, counts fetches,
    and can rotate its keys or go down."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, Any]] = []
        self.fetches = 0
        self.status = 200
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        entries = [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())), "kid": kid, "alg": "RS256"}
            for kid, private in self.keys
        ]
        return web.json_response({"keys": entries}, status=self.status)


JWKS_POLICY = """\
twilio: {{account_sid: AC00000000000000000000000000000009, auth_token_env: ACME_TWILIO_AUTH_TOKEN}}
numbers: ["+15550009999"]
api: {{jwks_url: "{url}", audience: switchyard, issuer: "https://idp.test"}}
"""


async def _jwks_client(aiohttp_client: Any, clock: FakeClock, tmp_path: Path, idp: IdentityProvider) -> Client:
    (tmp_path / "jwks.yaml").write_text(JWKS_POLICY.format(url=idp.url))
    settings = Settings(policies_dir=tmp_path, public_urls=("http://gw.test",), reload_interval=0)
    client: Client = await aiohttp_client(create_app(settings, env=ENV, clock=clock))
    return client


def _rs256(private: Any, kid: str, **claims: object) -> str:
    body = {"tenant": "jwks", "aud": "switchyard", "iss": "https://idp.test", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": kid})


async def test_keys_from_the_tenants_jwks_verify_and_rotate(
    aiohttp_client: Any, clock: FakeClock, tmp_path: Path
) -> None:
    """RS256 tokens verify against the tenant's JWKS, fetched from its identity provider (a real
    HTTP server): a key rotated in is fetched once MIN_REFETCH has passed, and kept."""
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with running(IdentityProvider()) as idp:
        idp.keys = [("2026-01", first)]
        client = await _jwks_client(aiohttp_client, clock, tmp_path, idp)
        ok = await client.get("/api/v1/limits", headers={"Authorization": f"Bearer {_rs256(first, '2026-01')}"})
        assert ok.status == 200 and (await ok.json())["tenant"] == "jwks"
        idp.keys.append(("2026-02", second))
        rotated = {"Authorization": f"Bearer {_rs256(second, '2026-02')}"}
        assert (await client.get("/api/v1/limits", headers=rotated)).status == 401  # within MIN_REFETCH
        clock.advance(MIN_REFETCH)
        assert (await client.get("/api/v1/limits", headers=rotated)).status == 200
        assert (await client.get("/api/v1/limits", headers=rotated)).status == 200
        assert idp.fetches == 2


async def test_a_jwks_never_fetched_is_503_not_401(aiohttp_client: Any, clock: FakeClock, tmp_path: Path) -> None:
    """The identity provider failing before any key set was had: the client is told to retry
    (503 problem JSON), not that its token is bad."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with running(IdentityProvider()) as idp:
        idp.status = 500
        client = await _jwks_client(aiohttp_client, clock, tmp_path, idp)
        response = await client.get("/api/v1/limits", headers={"Authorization": f"Bearer {_rs256(key, 'k')}"})
        assert response.status == 503
        assert (await response.json(content_type="application/problem+json"))["title"] == "Key set unavailable"


async def test_a_token_without_the_endpoints_scope_is_403(aiohttp_client: Any, clock: FakeClock) -> None:
    """A valid token whose scope claim lacks cost:read gets 403 with RFC 6750's insufficient_scope
    challenge on /api/v1/cost, and is not charged; with the scope it reads the cost."""
    client = await _client(aiohttp_client, clock)
    claims = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 300}
    narrow = jwt.encode({**claims, "scope": "calls:write"}, NORTHWIND_JWT, algorithm="HS256")
    response = await client.get("/api/v1/cost", headers={"Authorization": f"Bearer {narrow}"})
    assert response.status == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="switchyard", error="insufficient_scope", scope="cost:read"'
    )
    wide = jwt.encode({**claims, "scope": "cost:read"}, NORTHWIND_JWT, algorithm="HS256")
    ok = await client.get("/api/v1/cost", headers={"Authorization": f"Bearer {wide}"})
    assert ok.status == 200 and ok.headers["RateLimit"].startswith('"api";r=9')  # the 403 spent nothing


@pytest.mark.parametrize("path", ["/api/v1/limits", "/api/v1/admin/cost"], ids=["tenant", "admin"])
async def test_a_bearer_token_with_a_byte_that_is_not_utf8_is_401(
    aiohttp_client: Any, clock: FakeClock, path: str
) -> None:
    """A token holding a byte that is not UTF-8 (aiohttp hands it over as a lone surrogate) is a 401, not a 500."""
    settings = Settings(policies_dir=POLICIES, public_urls=("http://gw.test",), reload_interval=0)
    env = {**ENV, "SWITCHYARD_ADMIN_TOKEN": "a" * 32}
    client: Client = await aiohttp_client(create_app(settings, env=env, clock=clock))
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n".encode()
            + b"Authorization: Bearer \xff"
            + token().encode()
            + b"\r\n\r\n"
        )
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"401"
