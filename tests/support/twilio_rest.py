"""Twilio's REST API for tests: a real aiohttp server on 127.0.0.1 speaking the API's shape for
`POST /2010-04-01/Accounts/{sid}/Calls.json` and `…/Messages.json` (Basic auth with the account's SID and token, form
parameters, Twilio's JSON answers and error bodies). twilio-python is pointed at it the
supported way: its Client's `http_client` (the gateway's, with SWITCHYARD_TWILIO_API_BASE).
Errors and slowness can be injected; each arrival is timed on the clock the test gives."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.servers import serve


@dataclass
class Arrival:
    account: str
    params: dict[str, str]  # each name's last value
    at: float
    pairs: list[tuple[str, str]] = field(default_factory=list)  # every value, in order


@dataclass
class TwilioRestStandIn:
    accounts: dict[str, str]  # account SID -> auth token
    clock: Callable[[], float]
    arrivals: list[Arrival] = field(default_factory=list)
    fail: list[tuple[int, int]] = field(default_factory=list)  # (status, code) the next creates of calls get
    fail_messages: list[tuple[int, int]] = field(default_factory=list)  # ... and of messages
    hold: asyncio.Event | None = None  # while set and not released, creates wait (a slow Twilio)
    segments: str = "1"  # the num_segments Twilio answers a message with
    messages: list[Arrival] = field(default_factory=list)
    ended: int = 0  # calls the test has ended (sent their final status for)
    live: list[int] = field(default_factory=list)  # calls live as each create arrived: arrivals - ended
    port: int = 0
    _runner: web.AppRunner | None = None
    _count: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", self._create_call)
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create_message)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def calls(self) -> list[dict[str, str]]:
        return [a.params for a in self.arrivals]

    async def _create_call(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if not self._authorized(request, sid):
            return _error(401, 20003, "Authenticate")
        pairs = [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
        params = dict(pairs)
        self.arrivals.append(Arrival(sid, params, self.clock(), pairs))
        self.live.append(len(self.arrivals) - self.ended)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            status, code = self.fail.pop(0)
            return _error(status, code, "Too Many Requests" if code == 20429 else "Invalid parameter")
        self._count += 1
        call_sid = f"CA{self._count:032x}"
        params["_sid"] = call_sid  # (not Twilio's: which call this create became, for tests)
        return web.json_response(
            {
                "sid": call_sid,
                "account_sid": sid,
                "to": params.get("To"),
                "from": params.get("From"),
                "status": "queued",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{sid}/Calls/{call_sid}.json",
            },
            status=201,
        )

    async def _create_message(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        if not self._authorized(request, sid):
            return _error(401, 20003, "Authenticate")
        params = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.messages.append(Arrival(sid, params, self.clock()))
        if self.fail_messages:
            status, code = self.fail_messages.pop(0)
            return _error(status, code, "Too Many Requests" if code == 20429 else "Invalid parameter")
        message_sid = f"SM{len(self.messages):032x}"
        body = {
            "sid": message_sid,
            "account_sid": sid,
            "to": params.get("To"),
            "from": params.get("From"),
            "body": params.get("Body"),
            "status": "queued",
            "num_segments": self.segments,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json",
        }
        return web.json_response(body, status=201)

    def _authorized(self, request: web.Request, sid: str) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Basic":
            return False
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return user == sid and self.accounts.get(sid) == password


def _error(status: int, code: int, message: str) -> web.Response:
    """Twilio's error body (twilio-python reads `code` and `message` from it)."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)
