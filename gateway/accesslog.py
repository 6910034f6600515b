"""One structured JSON line per request: tenant, route, decision, status, duration.

aiohttp calls the access logger once per request anyway; ours replaces its default, so the
line costs no extra hook. Lines go straight to fd 1 with one os.write: the logging module's
handler chain measured several times slower, and a crash loses no buffered lines.
"""

from __future__ import annotations

import os
import time

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.keys import LOG

STDOUT = 1


class JsonAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:  # noqa: A002 - aiohttp's name
        record: dict[str, object] = {
            "ts": round(_now(), 3),
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "ms": round(time * 1000, 2),
        }
        fields = request.get(LOG)
        if fields is not None:
            for name in fields.__slots__:
                value = getattr(fields, name)
                if value is not None:
                    record[name] = value
        os.write(STDOUT, orjson.dumps(record) + b"\n")


_now = time.time
