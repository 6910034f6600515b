"""What a handler learned about a request, kept for its access-log line."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class LogFields:
    """Tenant, route and decision of one request. `caller` and `called` hold raw numbers: the
    access log masks them when (and only if) it writes the line, off the handler's path."""

    tenant: str | None = None
    kind: str | None = None
    route: str | None = None
    decision: str | None = None
    caller: str | None = None
    called: str | None = None
    sid: str | None = None
    # uvloop's loop.time(), which aiohttp's access log uses, ticks in whole milliseconds.
    started: float = field(default_factory=time.perf_counter)
