"""Twilio's REST API for tenants: one twilio-python Client per account, on the app's seam
(outbound/http.py), its errors mapped once to RestError, and 429 / 20429 ("not processed, safe
to retry") retried with exponential backoff and full jitter, within a deadline. No other error
is retried: a create that may have been processed must not be sent twice."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from gateway.clock import Clock, Sleep
from gateway.egress import Egress
from gateway.errors import SwitchyardError, UpstreamError
from gateway.outbound.http import SeamHttpClient
from gateway.policy.tenant import Tenant

log = logging.getLogger(__name__)

T = TypeVar("T")
TOO_MANY = 20429  # Twilio: "Too Many Requests" — not processed, safe to retry
BACKOFF = 0.5  # s: the first retry's ceiling, doubled each time
MAX_BACKOFF = 8.0
ATTEMPTS = 5


class RestError(SwitchyardError):
    """Twilio answered an error (`status`, Twilio's `code`), or could not be reached (status 0)."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"Twilio {status} ({code}): {message}")


class TwilioRest:
    def __init__(
        self,
        egress: Egress,
        clock: Clock,
        sleep: Sleep,
        base: str | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._http = SeamHttpClient(egress, clock, base)
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._clients: dict[tuple[str, bytes], Any] = {}

    def client(self, tenant: Tenant) -> Any:
        """The tenant's account's Client (its auth token: the policy's, from the environment)."""
        token = tenant.keys[0] if tenant.keys else b""
        key = (tenant.account_sid, token)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = Client(tenant.account_sid, token.decode(), http_client=self._http)
        return client

    async def call(self, make: Callable[[], Awaitable[T]], until: float) -> T:
        """`make()` (one REST request), retried on 429/20429 with backoff and full jitter
        while the clock is before `until`; RestError for anything else."""
        attempt = 0
        while True:
            try:
                return await make()
            except TwilioRestException as exc:
                status, code = int(exc.status), exc.code
                retryable = status == 429 or code == TOO_MANY
                message = str(exc.msg)[:200]
            except UpstreamError as exc:  # not reached: nothing was processed only if it never connected
                if exc.reason != "connect":
                    raise RestError(0, None, exc.reason) from None
                status, code, retryable, message = 0, None, True, exc.reason
            attempt += 1
            wait = min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)) * self._jitter()
            if not retryable or attempt >= ATTEMPTS or self._clock() + wait >= until:
                raise RestError(status, code, message)
            log.info("Twilio %s (%s): retry %d in %.2fs", status, code, attempt, wait)
            await self._sleep(wait)
