"""Twilio's REST API for tests: the demo's stand-in (gateway/demo/twilio_rest.py: Calls.json and
Messages.json with Basic auth, Twilio's JSON answers and error bodies) served alone on 127.0.0.1,
timing arrivals on the test's clock. twilio-python is pointed at it the supported way: its
Client's `http_client` (the gateway's, with SWITCHYARD_TWILIO_API_BASE). Tests send the status
callbacks themselves: no play-back here."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.demo.twilio_rest import Arrival as Arrival  # re-exported for tests
from gateway.demo.twilio_rest import TwilioApi
from tests.support.servers import serve


@dataclass
class TwilioRestStandIn(TwilioApi):
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        self.install(app)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
