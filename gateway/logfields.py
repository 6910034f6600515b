"""What a handler learned about a request, kept for its access-log line."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.redact import mask_number


@dataclass(slots=True)
class LogFields:
    """Tenant, route and decision of one request; phone numbers are masked on the way in."""

    tenant: str | None = None
    kind: str | None = None
    route: str | None = None
    decision: str | None = None
    caller: str | None = None
    called: str | None = None
    sid: str | None = None
    # uvloop's loop.time(), which aiohttp's access log uses, ticks in whole milliseconds.
    started: float = field(default_factory=time.perf_counter)

    def numbers(self, caller: str, called: str) -> None:
        self.caller = mask_number(caller) if caller else None
        self.called = mask_number(called) if called else None
