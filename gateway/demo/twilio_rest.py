"""A stand-in for Twilio's REST API, the target of the gateway's outbound API in the demo (and in
tests): `POST /2010-04-01/Accounts/{sid}/Calls.json` and `…/Messages.json` with Basic auth (the
account's SID and auth token), form parameters, Twilio's JSON answers (201) and error bodies.
The gateway reaches it through twilio-python, pointed here by SWITCHYARD_TWILIO_API_BASE.
Not for production.

In the demo (`call_seconds` set) it also plays each call's and text's life back, as Twilio
would: the statuses asked for (`StatusCallbackEvent`; `completed` always) are POSTed to the
`StatusCallback` the create named, signed with the account's token by twilio's own
RequestValidator: a call is answered after a second and completes after `call_seconds`
(`CallDuration`), a text is `sent`, then `delivered`. Callbacks go to loopback addresses only:
this stand-in follows URLs from its requests, which a demo on a laptop may do and the gateway
never does.

Tests leave `call_seconds` unset and send the statuses themselves; they can inject errors
(`fail`, `fail_messages`), slowness (`hold`), and read what arrived, timed on their clock.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

log = logging.getLogger("switchyard.demo")

API = "/2010-04-01/Accounts/{sid}"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
RING = 1.0  # s from the create to the call's answer, in the demo's play-back
DELIVERY = 0.5  # s from `sent` to `delivered`
CALLBACK_WITHIN = 5.0  # s for a status callback's answer


@dataclass
class Arrival:
    account: str
    params: dict[str, str]  # each name's last value
    at: float
    pairs: list[tuple[str, str]] = field(default_factory=list)  # every value, in order


@dataclass
class TwilioApi:
    accounts: dict[str, str]  # account SID -> auth token
    clock: Callable[[], float] = time.monotonic
    call_seconds: float | None = None  # play each call's statuses back (demo); None: never (tests)
    ring: float = RING  # ... answered this long after its create
    delivery: float = DELIVERY  # ... and a text delivered this long after it is sent
    record: bool = True  # keep every arrival (tests); a demo under load keeps none
    arrivals: list[Arrival] = field(default_factory=list)
    fail: list[tuple[int, int]] = field(default_factory=list)  # (status, code) the next creates of calls get
    fail_messages: list[tuple[int, int]] = field(default_factory=list)  # ... and of messages
    hold: asyncio.Event | None = None  # while set and not released, creates wait (a slow Twilio)
    segments: str = "1"  # the num_segments Twilio answers a message with
    messages: list[Arrival] = field(default_factory=list)
    ended: int = 0  # calls the test has ended (sent their final status for)
    live: list[int] = field(default_factory=list)  # calls live as each create arrived: arrivals - ended
    _calls: int = 0
    _texts: int = 0
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def install(self, app: web.Application) -> None:
        """Add the API's routes to `app`, and its callback session to the app's life."""
        app.router.add_post(API + "/Calls.json", self._create_call)
        app.router.add_post(API + "/Messages.json", self._create_message)
        app.cleanup_ctx.append(self._life)

    def calls(self) -> list[dict[str, str]]:
        return [a.params for a in self.arrivals]

    async def _life(self, app: web.Application) -> AsyncIterator[None]:
        if self.call_seconds is not None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALLBACK_WITHIN))
        yield
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _arrival(self, request: web.Request, kept: list[Arrival]) -> Arrival | web.Response:
        """A create's account and form (kept in `kept` when recording), or Twilio's 401."""
        sid = request.match_info["sid"]
        if not self._authorized(request, sid):
            return _error(401, 20003, "Authenticate")
        pairs = [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
        arrival = Arrival(sid, dict(pairs), self.clock(), pairs)
        if self.record:
            kept.append(arrival)
        return arrival

    async def _create_call(self, request: web.Request) -> web.Response:
        arrival = await self._arrival(request, self.arrivals)
        if isinstance(arrival, web.Response):
            return arrival
        sid, params, pairs = arrival.account, arrival.params, arrival.pairs
        if self.record:
            self.live.append(len(self.arrivals) - self.ended)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            status, code = self.fail.pop(0)
            return _error(status, code, "Too Many Requests" if code == 20429 else "Invalid parameter")
        self._calls += 1
        call_sid = f"CA{self._calls:032x}"
        params["_sid"] = call_sid  # (not Twilio's: which call this create became, for tests)
        if self.call_seconds is not None:
            events = [v for k, v in pairs if k == "StatusCallbackEvent"]
            self._play(self._play_call(sid, params, call_sid, events, self.call_seconds))
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
        arrival = await self._arrival(request, self.messages)
        if isinstance(arrival, web.Response):
            return arrival
        sid, params = arrival.account, arrival.params
        if self.fail_messages:
            status, code = self.fail_messages.pop(0)
            return _error(status, code, "Too Many Requests" if code == 20429 else "Invalid parameter")
        self._texts += 1
        message_sid = f"SM{self._texts:032x}"
        if self.call_seconds is not None:
            self._play(self._play_message(sid, params, message_sid))
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
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return user == sid and self.accounts.get(sid) == password

    # The demo's play-back of what happens after a create.

    def _play(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play_call(
        self, account: str, params: dict[str, str], call_sid: str, events: list[str], seconds: float
    ) -> None:
        base = {
            "AccountSid": account, "CallSid": call_sid, "From": params.get("From", ""), "To": params.get("To", ""),
            "Direction": "outbound-api", "ApiVersion": "2010-04-01",
        }  # fmt: skip
        steps = [("initiated", "initiated", 0.0), ("ringing", "ringing", 0.0), ("answered", "in-progress", self.ring)]
        for event, status, wait in steps:
            await asyncio.sleep(wait)
            if event in events:
                await self._callback(account, params, {**base, "CallStatus": status, "StatusCallbackEvent": event})
        await asyncio.sleep(max(0.0, seconds - self.ring))
        final = {**base, "CallStatus": "completed", "CallDuration": str(max(0, round(seconds - self.ring)))}
        await self._callback(account, params, {**final, "StatusCallbackEvent": "completed"})

    async def _play_message(self, account: str, params: dict[str, str], message_sid: str) -> None:
        base = {
            "AccountSid": account,
            "MessageSid": message_sid,
            "From": params.get("From", ""),
            "To": params.get("To", ""),
        }
        await self._callback(account, params, {**base, "MessageStatus": "sent", "SmsStatus": "sent"})
        await asyncio.sleep(self.delivery)
        await self._callback(account, params, {**base, "MessageStatus": "delivered", "SmsStatus": "delivered"})

    async def _callback(self, account: str, params: dict[str, str], form: dict[str, str]) -> None:
        """One status to the create's StatusCallback, signed as Twilio signs it; loopback only."""
        url = params.get("StatusCallback", "")
        if self._session is None or urlsplit(url).hostname not in LOOPBACK:
            return
        signature = RequestValidator(self.accounts[account]).compute_signature(url, form)
        try:
            async with self._session.post(url, data=form, headers={"X-Twilio-Signature": signature}) as answer:
                await answer.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            log.info("twilio stand-in: a status callback was not delivered: %s", type(error).__name__)


def _error(status: int, code: int, message: str) -> web.Response:
    """Twilio's error body (twilio-python reads `code` and `message` from it)."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)
