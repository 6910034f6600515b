"""A local OTLP/HTTP trace receiver for the `traced` bench target: decodes every export, counts spans.

    .venv/bin/python loadtest/otlp_sink.py --port 4318

POST /v1/traces parses the body as an ExportTraceServiceRequest (opentelemetry-proto, as a
collector does), counts its spans and answers an empty ExportTraceServiceResponse; a body that
does not parse gets 400 and is counted as bad. GET /count answers the counts so far as JSON
({"spans", "exports", "bad"}); GET /healthz answers ok. At exit it prints the counts. bench.py
runs it on the load generator's CPU, not the gateway's, with uvloop when present.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
EMPTY_RESPONSE = ExportTraceServiceResponse().SerializeToString()
MAX_BODY = 64 * 1024 * 1024  # an export of 512 spans is a few hundred KB; aiohttp's default cap is 1 MiB


class Counts:
    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        self.bad = 0

    def as_dict(self) -> dict[str, int]:
        return {"spans": self.spans, "exports": self.exports, "bad": self.bad}


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def create_app(counts: Counts) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(await request.read())
        except Exception:  # protobuf's DecodeError (google.protobuf has no type stubs in this venv)
            counts.bad += 1
            return web.Response(status=400, text="not an ExportTraceServiceRequest")
        counts.exports += 1
        counts.spans += span_count(message)
        return web.Response(body=EMPTY_RESPONSE, content_type=PROTOBUF)

    async def count(request: web.Request) -> web.Response:
        return web.json_response(counts.as_dict())

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def report(app: web.Application) -> None:
        print(f"otlp_sink: {counts.spans} spans in {counts.exports} exports, {counts.bad} bad", flush=True)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(report)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("otlp_sink: uvloop missing, running on asyncio's loop", file=sys.stderr)
    web.run_app(create_app(Counts()), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
