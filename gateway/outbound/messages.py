"""Sending a text for a tenant (POST /api/v1/messages): the request checked against its policy,
its `sms` bucket charged, the message's segments and cost estimated before sending and held on
the day's budget, `messages.create` sent, and the hold settled from Twilio's answer (its
`num_segments`), or let go when nothing was sent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.clock import Clock
from gateway.errors import BackendError
from gateway.exchange import Exchange
from gateway.limits.base import Limiter
from gateway.limits.budget import Reservation, utc_day
from gateway.limits.budget_failover import FailoverLedger
from gateway.outbound.calls import CallRefused, parties, refused_by_twilio, request_of
from gateway.outbound.client import RestError, TwilioRest
from gateway.policy.tenant import Tenant
from gateway.telemetry import cost

log = logging.getLogger(__name__)

MAX_BODY_CHARS = 1600  # Twilio's limit on a message body
HOLD_TTL = 300.0  # s an estimate is held if this instance dies before settling it


@dataclass(frozen=True, slots=True)
class Sent:
    sid: str
    status: str
    segments: int


def parse(body: bytes, tenant: Tenant) -> dict[str, Any]:
    """messages.create's parameters: `to`, `from`, `body` (1 to 1600 characters)."""
    _, data = request_of(body, tenant)
    return parse_data(data, tenant)


def parse_data(data: dict[str, Any], tenant: Tenant) -> dict[str, Any]:
    """parse() of a request already read as a JSON object."""
    to, from_ = parties(data, tenant)
    text = data.get("body")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_BODY_CHARS:
        raise CallRefused(400, "Bad request", f"`body` must be 1 to {MAX_BODY_CHARS} characters")
    return {"to": to, "from_": from_, "body": text}


class Messages:
    def __init__(self, rest: TwilioRest, limits: Limiter, ledger: FailoverLedger, clock: Clock, wall: Clock) -> None:
        self._rest = rest
        self._limits = limits
        self._ledger = ledger
        self._clock = clock
        self._wall = wall

    async def send(self, tenant: Tenant, params: dict[str, Any], exchange: Exchange | None = None) -> Sent:
        """The message sent and its cost booked; CallRefused otherwise."""
        await self._charge(tenant)
        estimate = cost.sms_segments(params["body"])
        hold = await self._hold(tenant, estimate)
        client = self._rest.client(tenant)
        sent = self._clock()
        try:
            message = await self._rest.call(lambda: client.messages.create_async(**params), sent + 10.0)
        except RestError as error:
            await self._settle(hold, None)
            if exchange is not None:
                failed = {"error.type": str(error.code or error.status or "unreachable")}
                exchange.timed("twilio POST Messages", self._clock() - sent, sent, attributes=failed)
            raise refused_by_twilio(error, "message") from None
        except BaseException:
            await self._settle(hold, None)
            raise
        segments = _segments(getattr(message, "num_segments", None), estimate)
        spent = cost.sms_cost(tenant.prices, segments)
        await self._settle(hold, spent)
        if exchange is not None:
            done = {"twilio.message_sid": str(message.sid)}
            exchange.timed("twilio POST Messages", self._clock() - sent, sent, attributes=done)
            exchange.call_cost = spent  # booked at the end, but for what the hold committed already
            if hold is not None:
                exchange.charged = spent
        return Sent(str(message.sid), str(message.status), segments)

    async def _charge(self, tenant: Tenant) -> None:
        rules = tuple(rule for rule in tenant.rules["sms"] if rule.name == "sms")
        if not rules:
            return
        decision = self._limits.acquire_now(tenant.id, rules) or await self._limits.acquire(
            tenant.id, rules, mode=tenant.on_store_failure
        )
        if not decision.allowed:
            raise CallRefused(429, "Too many messages", "the tenant's sms bucket is empty", decision.retry_after)

    async def _hold(self, tenant: Tenant, segments: int) -> Reservation | None:
        """The estimate held on the day's budget (None without a budget, or with free texts)."""
        amount = cost.total(cost.sms_cost(tenant.prices, segments))
        if tenant.daily_budget is None or amount == 0:
            return None
        try:
            day = utc_day(self._wall())
            hold = await self._ledger.reserve(
                tenant.id, day, amount, tenant.daily_budget, HOLD_TTL, tenant.on_store_failure
            )  # fmt: skip
        except BackendError:
            raise CallRefused(503, "Budget unavailable", "the spend ledger is not answering; try again", 1.0) from None
        if hold is None:
            raise CallRefused(429, "Daily budget exhausted", f"tenant {tenant.id} has spent its daily budget", 60.0)
        return hold

    async def _settle(self, hold: Reservation | None, spent: cost.Cost | None) -> None:
        if hold is None:
            return
        try:
            if spent is None:
                await self._ledger.release(hold)
            else:
                await self._ledger.commit(hold, spent)
        except BackendError as error:
            log.warning("tenant %s: a message's budget hold not settled: %s", hold.tenant, error)


def _segments(given: object, estimate: int) -> int:
    """Twilio's count (a string of digits in its answer) when it gives one, else ours."""
    if isinstance(given, str) and given.isdigit() and 0 < len(given) <= 3:
        return int(given)
    return estimate
