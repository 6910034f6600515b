"""Placing a call for a tenant (POST /api/v1/calls): the request checked against its policy,
a `concurrent_calls` slot taken (queued a while when none is free), the account's calls per
second paced, `calls.create` sent, and the slot kept under the call's SID until its final
status callback (handlers/twilio.py gives it back), or until its lease expires.

The slot is a lease (limits/leases.py, exact across instances with Redis) with a TTL that
outlasts the longest call (ring timeout + time limit + a minute), so a lost callback costs the
slot only that long. Its id travels in the status callback's URL (`?slot=<id>`, inside what
Twilio signs), so whichever instance gets the final status gives back exactly that slot, even
when the callback comes before Twilio's answer to the create has (an immediate `failed`).

A tenant with a daily budget holds the call's estimate (budget.call_reserve_minutes at
prices.voice_minute) before anything else, or the call is refused with 429: the day cannot
hold it. The hold lives as long as the slot and is named the same way (`&hold=<day>.<id>` in
the status callback's URL); the final status releases it, and the call's real minutes are
booked from its CallDuration (telemetry/usage.py), once.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.clock import Clock, Sleep
from gateway.errors import BackendError, SwitchyardError
from gateway.exchange import Exchange
from gateway.limits.base import Limiter, Rule
from gateway.limits.budget import Reservation, new_reservation_id, utc_day
from gateway.limits.budget_failover import FailoverLedger
from gateway.limits.leases import Lease, LeaseStore
from gateway.outbound.client import TOO_MANY, RestError, TwilioRest
from gateway.policy.tenant import OutboundCalls, Tenant

log = logging.getLogger(__name__)

CALLS = "calls"  # the lease kind of concurrent_calls
POLL = 0.25  # s between tries for a slot while a request waits in the queue
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
MAX_TWIML = 4000  # characters: Twilio's limit on the `Twiml` parameter


class CallRefused(SwitchyardError):
    """The call was not placed: an HTTP status and problem text for the API client."""

    def __init__(
        self, status: int, title: str, detail: str, retry_after: float | None = None, code: int | None = None
    ) -> None:
        self.status, self.title, self.detail, self.retry_after, self.code = status, title, detail, retry_after, code
        super().__init__(f"{status} {title}: {detail}")


@dataclass(frozen=True, slots=True)
class Placed:
    sid: str
    status: str


def parse(body: bytes, tenant: Tenant) -> dict[str, Any]:
    """calls.create's parameters for a request body, checked against the tenant's policy:
    `from` one of its numbers, `to` E.164 and allowed, the TwiML from a named static voice
    route, an allowed URL, or (only when the policy allows it) inline. CallRefused(400/403)."""
    _, data = request_of(body, tenant)
    return parse_data(data, tenant)


def parse_data(data: dict[str, Any], tenant: Tenant, default_timeout: int | None = None) -> dict[str, Any]:
    """parse() of a request already read as a JSON object; `default_timeout`: the ring timeout
    when the request gives none (at most the policy's; default the policy's)."""
    outbound = tenant.outbound
    assert outbound is not None
    to, from_ = parties(data, tenant)
    params: dict[str, Any] = {"to": to, "from_": from_, "time_limit": outbound.time_limit}
    sources = [k for k in ("route", "url", "twiml") if data.get(k) is not None]
    if len(sources) != 1:
        raise CallRefused(400, "Bad request", "give exactly one of `route`, `url`, `twiml`")
    value = data[sources[0]]
    if not isinstance(value, str):
        raise CallRefused(400, "Bad request", f"`{sources[0]}` must be a string")
    if sources[0] == "route":
        route = next((r for r in tenant.routes if r.name == value and r.kind == "voice"), None)
        if route is None or route.call is not None or not route.reply:
            raise CallRefused(
                400, "Bad request", "`route` must name one of the tenant's voice routes with static TwiML"
            )
        params["twiml"] = route.reply.decode()
    elif sources[0] == "url":
        if value not in outbound.urls:
            raise CallRefused(403, "URL not allowed", "`url` must be one of the policy's outbound.urls")
        params["url"] = value
    else:
        if not outbound.allow_twiml:
            raise CallRefused(403, "TwiML not allowed", "the tenant's policy does not allow inline `twiml`")
        if len(value) > MAX_TWIML:
            raise CallRefused(400, "Bad request", f"`twiml` is over {MAX_TWIML} characters")
        params["twiml"] = value
    ring = outbound.ring_timeout if default_timeout is None else min(default_timeout, outbound.ring_timeout)
    timeout = data.get("timeout", ring)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= outbound.ring_timeout:
        raise CallRefused(400, "Bad request", f"`timeout` must be 1 to {outbound.ring_timeout} seconds")
    params["timeout"] = timeout
    if outbound.status_events != ("completed",):  # Twilio's default; more for the tenant's own callback
        params["status_callback_event"] = list(outbound.status_events)
    return params


def refused_by_twilio(error: RestError, what: str) -> CallRefused:
    """Twilio's error, as the API client's answer: 503 unreachable, 429 busy (20429, after our
    own retries), 502 with Twilio's code for anything else (nothing is retried then)."""
    if error.status == 0:
        return CallRefused(503, "Twilio unreachable", f"the {what} was not sent: {error.message}")
    if error.status == 429 or error.code == TOO_MANY:
        return CallRefused(429, "Twilio is busy", f"Twilio refused the {what} for now", 1.0, error.code)
    return CallRefused(502, f"Twilio refused the {what}", error.message, code=error.code)


def request_of(body: bytes, tenant: Tenant) -> tuple[OutboundCalls, dict[str, Any]]:
    """The tenant's outbound policy and the request's JSON object; CallRefused otherwise."""
    outbound = tenant.outbound
    if outbound is None:
        raise CallRefused(403, "No outbound API", f"tenant {tenant.id} has no outbound: block in its policy")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CallRefused(400, "Bad request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise CallRefused(400, "Bad request", "the body must be a JSON object")
    return outbound, data


def parties(data: dict[str, Any], tenant: Tenant) -> tuple[str, str]:
    """`to` (E.164, allowed by the policy) and `from` (one of the tenant's numbers)."""
    outbound = tenant.outbound
    assert outbound is not None
    to, from_ = data.get("to"), data.get("from")
    if not isinstance(to, str) or E164.fullmatch(to) is None:
        raise CallRefused(400, "Bad request", "`to` must be an E.164 number (+15551230000)")
    if not isinstance(from_, str) or from_ not in tenant.numbers:
        raise CallRefused(400, "Bad request", "`from` must be one of the tenant's numbers")
    if (outbound.to_allow and not to.startswith(outbound.to_allow)) or to.startswith(outbound.to_deny):
        raise CallRefused(403, "Destination not allowed", "the tenant's policy does not allow that number")
    return to, from_


def lease_ttl(tenant: Tenant) -> float:
    """How long a placed call's slot is held without its final status: the longest call."""
    assert tenant.outbound is not None
    return float(tenant.outbound.ring_timeout + tenant.outbound.time_limit + 60)


SLOT_ID = re.compile(r"^[0-9a-f]{32}$")


def call_lease(tenant: Tenant, slot: str) -> Lease | None:
    """The slot a placed call holds, named by its status callback's `slot` (to give back at
    its final status); None without a limit or for a slot id not of ours."""
    if tenant.concurrent_calls is None or tenant.outbound is None or SLOT_ID.fullmatch(slot) is None:
        return None
    return Lease(tenant.id, CALLS, slot, tenant.concurrent_calls, lease_ttl(tenant))


def with_slot(status_callback: str, lease: Lease | None) -> str:
    if lease is None:
        return status_callback
    return f"{status_callback}{'&' if '?' in status_callback else '?'}slot={lease.id}"


HOLD_PREFIX = "ocall:"
# The `hold` of a status callback's URL: the day the estimate was held on, and its id.
HOLD_PARAM = re.compile(r"^(\d{4}-\d{2}-\d{2})\.([0-9a-f]{32})$")


def with_hold(status_callback: str, hold: Reservation | None) -> str:
    if hold is None:
        return status_callback
    value = f"{hold.day}.{hold.id.removeprefix(HOLD_PREFIX)}"
    return f"{status_callback}{'&' if '?' in status_callback else '?'}hold={value}"


def call_hold(tenant: Tenant, value: str) -> Reservation | None:
    """The budget hold a placed call made, named by its status callback's `hold` (to release at
    its final status); None without a budget or for a value not of ours."""
    match = HOLD_PARAM.fullmatch(value)
    if match is None or tenant.daily_budget is None or not tenant.call_reserve:
        return None
    return Reservation(tenant.id, match[1], HOLD_PREFIX + match[2], tenant.call_reserve)


class Calls:
    def __init__(
        self,
        rest: TwilioRest,
        leases: LeaseStore,
        limits: Limiter,
        ledger: FailoverLedger,
        clock: Clock,
        sleep: Sleep,
        wall: Clock,
    ) -> None:
        self._rest = rest
        self._leases = leases
        self._limits = limits
        self._ledger = ledger
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._queued: Counter[str] = Counter()  # requests waiting for a slot, per tenant, here

    async def place(
        self, tenant: Tenant, params: dict[str, Any], status_callback: str, exchange: Exchange | None = None
    ) -> Placed:
        """The call placed, its slot held under its SID; CallRefused otherwise. Each step (the
        wait for a slot, the pacing, the REST call) is timed on `exchange`: child spans."""
        assert tenant.outbound is not None
        clock = self._clock
        began = clock()
        until = began + tenant.outbound.queue_timeout
        hold = await self._hold(tenant)  # first: a spent day answers at once, without queueing
        try:
            slot = await self._slot(tenant, until)
        except BaseException:
            await self._release(hold)
            raise
        status_callback = with_hold(with_slot(status_callback, slot), hold)
        try:
            paced = clock()
            await self._pace(tenant, until)
            sent = clock()
            if exchange is not None:
                exchange.timed("calls.slot", paced - began, began)
                exchange.timed("calls.pace", sent - paced, paced)
            client = self._rest.client(tenant)
            try:
                call = await self._rest.call(
                    lambda: client.calls.create_async(status_callback=status_callback, **params),
                    until + 10.0,  # retries of 20429 may run a little past the queue's wait
                )
            except RestError as error:
                if exchange is not None:
                    failed = {"error.type": str(error.code or error.status or "unreachable")}
                    exchange.timed("twilio POST Calls", clock() - sent, sent, attributes=failed)
                raise
            if exchange is not None:
                exchange.timed("twilio POST Calls", clock() - sent, sent, attributes={"twilio.call_sid": str(call.sid)})
        except RestError as error:
            await self._give_back(slot)
            await self._release(hold)
            raise refused_by_twilio(error, "call") from None
        except BaseException:
            await self._give_back(slot)
            await self._release(hold)
            raise
        return Placed(str(call.sid), str(call.status))

    async def _hold(self, tenant: Tenant) -> Reservation | None:
        """The call's estimate held on the day's budget (None without a budget or an estimate);
        CallRefused(429) when the day cannot hold it, (503) when the ledger cannot say."""
        amount = tenant.call_reserve
        if tenant.daily_budget is None or not amount:
            return None
        day = utc_day(self._wall())
        try:
            hold = await self._ledger.reserve(
                tenant.id, day, amount, tenant.daily_budget, lease_ttl(tenant), tenant.on_store_failure,
                id=HOLD_PREFIX + new_reservation_id(),
            )  # fmt: skip
        except BackendError:
            raise CallRefused(503, "Budget unavailable", "the spend ledger is not answering; try again", 1.0) from None
        if hold is None:
            raise CallRefused(
                429, "Daily budget exhausted", f"tenant {tenant.id}'s day cannot hold another call's estimate", 60.0
            )
        return hold

    async def _release(self, hold: Reservation | None) -> None:
        if hold is not None:
            await release_hold(self._ledger, hold)

    async def _slot(self, tenant: Tenant, until: float) -> Lease | None:
        limit = tenant.concurrent_calls
        if limit is None:
            return None
        outbound = tenant.outbound
        assert outbound is not None
        lease = await self._acquire(tenant, limit)
        if lease is not None:
            return lease
        if self._queued[tenant.id] >= outbound.queue_max:
            raise CallRefused(429, "Too many calls", f"{limit} calls are live and the queue is full", POLL * 4)
        self._queued[tenant.id] += 1
        try:
            while lease is None:
                left = until - self._clock()
                if left <= 0:
                    raise CallRefused(429, "Too many calls", f"{limit} calls are live; none ended in time", POLL * 4)
                await self._sleep(min(POLL, left))
                lease = await self._acquire(tenant, limit)
        finally:
            self._queued[tenant.id] -= 1
        return lease

    async def _acquire(self, tenant: Tenant, limit: int) -> Lease | None:
        try:
            return await self._leases.acquire(tenant.id, CALLS, limit, lease_ttl(tenant))
        except BackendError:
            raise CallRefused(503, "Limits unavailable", "the shared store is not answering; try again", 1.0) from None

    async def _pace(self, tenant: Tenant, until: float) -> None:
        """Wait for the account's next calls-per-second slot (shared across instances with
        Redis), so Twilio's own queue never grows; CallRefused(429) past `until`."""
        assert tenant.outbound is not None
        rules = (Rule("cps", tenant.outbound.cps, 1.0, 1),)
        while True:
            decision = self._limits.acquire_now(tenant.id, rules) or await self._limits.acquire(
                tenant.id, rules, mode=tenant.on_store_failure
            )
            if decision.allowed:
                return
            wait = decision.retry_after
            if self._clock() + wait > until:
                raise CallRefused(429, "Too many calls", "the account's calls per second are taken", wait)
            await self._sleep(wait)

    async def _give_back(self, lease: Lease | None) -> None:
        if lease is not None:
            await give_back(self._leases, lease)


async def release_hold(ledger: FailoverLedger, hold: Reservation) -> None:
    """A call's budget hold dropped (its create failed, or its final status came: the minutes
    are booked from the callback). FailoverLedger.release never raises BackendError."""
    await ledger.release(hold)


async def give_back(leases: LeaseStore, lease: Lease) -> None:
    """A call's slot free again (its create failed, or its final status came)."""
    try:
        await leases.release(lease)
    except BackendError as error:  # it lapses with its lease
        log.warning("tenant %s: a call's slot not given back: %s", lease.tenant, error)
