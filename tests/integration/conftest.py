"""Fixtures for integration tests: a gateway app on 127.0.0.1 with the example policies."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from gateway.app import create_app
from gateway.settings import Settings
from gateway.telemetry.accesslog import JsonAccessLogger
from tests.support.clock import FakeClock
from tests.support.gateway import POLICIES, PUBLIC, Client, MakeClient
from tests.support.twilio import ENV


class GatewayServer(TestServer):
    """aiohttp's TestServer, but as `switchyard serve` runs: handlers are not cancelled when
    the client goes away (TestServer turns that on), so a hang-up mid-body is seen and logged."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def make_gateway(aiohttp_client: Any, clock: FakeClock) -> MakeClient:
    """Builds a gateway app (example policies, public URL http://gw.test, the test's clock)."""

    async def make(**overrides: Any) -> Client:
        options: dict[str, Any] = {"policies_dir": POLICIES, "public_urls": (PUBLIC,), "reload_interval": 0}
        settings = Settings(**{**options, **overrides})
        server = GatewayServer(create_app(settings, env=ENV, clock=clock), host="127.0.0.1")
        # TestServer passes only start_server()'s kwargs to its runner: start it here with our logger.
        await server.start_server(access_log_class=JsonAccessLogger)
        client: Client = await aiohttp_client(server)
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: MakeClient) -> Client:
    return await make_gateway()
