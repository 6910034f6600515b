"""A gateway app under test: the example policies, its public URL, signed posts to it, and
gateways started on a test's own policies as `switchyard serve` runs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from gateway.app import create_app
from gateway.clock import Clock, Sleep
from gateway.settings import Settings
from gateway.telemetry.accesslog import JsonAccessLogger
from tests.support.twilio import signed_form

POLICIES = Path(__file__).resolve().parents[2] / "policies"
PUBLIC = "http://gw.test"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


async def post(client: Client, path: str, params: dict[str, str], token: str, **headers: str) -> tuple[int, str]:
    """A form webhook signed (by twilio's RequestValidator) for PUBLIC + path; status and text."""
    head, body = signed_form(token, PUBLIC + path, params)
    response = await client.post(path, data=body, headers={**head, **headers})
    return response.status, await response.text()


class GatewayServer(TestServer):
    """aiohttp's TestServer, but as `switchyard serve` runs: handlers are not cancelled when
    the client goes away (TestServer turns that on), so a hang-up mid-body is seen and logged."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


async def start_gateway(
    aiohttp_client: Any,
    policies: Path,
    env: Mapping[str, str],
    clock: Clock,
    wall: Callable[[], float] | None = None,
    sleep: Sleep | None = None,
    **settings: Any,
) -> Client:
    """A gateway app on `policies` (public URL PUBLIC, no reloading, then `settings`), served by a
    GatewayServer with the JSON access logger; the test client `aiohttp_client` makes for it."""
    options: dict[str, Any] = {"policies_dir": policies, "public_urls": (PUBLIC,), "reload_interval": 0}
    app = create_app(Settings(**{**options, **settings}), env=env, clock=clock, wall=wall, sleep=sleep)
    server = GatewayServer(app, host="127.0.0.1")
    # TestServer passes only start_server()'s kwargs to its runner: start it here with our logger.
    await server.start_server(access_log_class=JsonAccessLogger)
    client: Client = await aiohttp_client(server)
    return client


def tenant_gateways(
    aiohttp_client: Any,
    clock: Clock,
    directory: Path,
    policy: Callable[..., str],
    environment: Mapping[str, str],
    wall: Callable[[], float] | None = None,
) -> MakeClient:
    """A test's `make_app`: each `make_app(**options)` writes `policy(**options)` as the tenant
    acme's file in `directory` and starts a gateway on it (start_gateway) with `environment`.
    Two options are the gateway's own: `env` adds variables (OTEL_*), `limiter_url` its store."""

    async def make(*, env: Mapping[str, str] | None = None, limiter_url: str = "memory://", **options: Any) -> Client:
        (directory / "acme.yaml").write_text(policy(**options))
        variables = {**environment, **(env or {})}
        return await start_gateway(aiohttp_client, directory, variables, clock, wall, limiter_url=limiter_url)

    return make
