"""Fixtures for integration tests: a gateway app on 127.0.0.1 with the example policies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.gateway import POLICIES, Client, MakeClient, start_gateway
from tests.support.gateway import GatewayServer as GatewayServer  # re-exported: tests import it from here
from tests.support.twilio import ACME_SID, ACME_TOKEN, ENV
from tests.support.twilio_rest import TwilioRestStandIn


@pytest.fixture
def make_gateway(aiohttp_client: Any, clock: FakeClock) -> MakeClient:
    """Builds a gateway app (example policies, public URL http://gw.test, the test's clock)."""

    async def make(policies_dir: Path = POLICIES, **overrides: Any) -> Client:
        return await start_gateway(aiohttp_client, policies_dir, ENV, clock, **overrides)

    return make


@pytest.fixture
async def gateway(make_gateway: MakeClient) -> Client:
    return await make_gateway()


@pytest.fixture
async def twilio(clock: FakeClock) -> AsyncIterator[TwilioRestStandIn]:
    """Twilio's REST API stand-in on 127.0.0.1 for the acme account, timing arrivals on the test's clock."""
    stand_in = TwilioRestStandIn({ACME_SID: ACME_TOKEN}, clock)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()
