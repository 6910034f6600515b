"""OTLP trace receivers on 127.0.0.1 that decode what they get with opentelemetry-proto, as a collector does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import grpc
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.servers import serve

Value = str | bool | int | float | bytes | None
Mode = Literal["normal", "slow", "refusing"]


def any_value(value: AnyValue) -> Value:
    """The Python value an AnyValue holds (scalars only: the gateway sends no arrays or maps)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    scalar: Value = getattr(value, which)
    return scalar


def attributes(pairs: Iterable[KeyValue]) -> dict[str, Value]:
    """A repeated KeyValue field as a dict."""
    return {kv.key: any_value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class Received:
    """One span as the collector saw it, with the resource and scope it came under."""

    span: Span
    resource: Mapping[str, Value]
    scope: str
    scope_version: str

    @property
    def attributes(self) -> dict[str, Value]:
        return attributes(self.span.attributes)


class _Spans:
    """Decoded spans and a condition to wait for a count of them (or of requests)."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self.metadata: list[dict[str, str]] = []
        self._changed = asyncio.Condition()

    async def record(self, request: ExportTraceServiceRequest, metadata: dict[str, str]) -> None:
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans += (
                    Received(span, resource, scope_spans.scope.name, scope_spans.scope.version)
                    for span in scope_spans.spans
                )
        self.metadata.append(metadata)
        async with self._changed:
            self._changed.notify_all()

    async def arrived(self) -> None:
        """Counts one request as it arrives (before it is answered) and wakes the waiters."""
        async with self._changed:
            self.requests += 1
            self._changed.notify_all()

    async def wait_for(self, n: int, within: float = 5.0) -> list[Received]:
        """The spans, once at least `n` have arrived; TimeoutError after `within` seconds."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.spans) >= n)
        return self.spans

    async def wait_for_requests(self, n: int, within: float = 5.0) -> None:
        """Returns once `n` export requests have arrived (answered or still held)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.requests >= n)


class OtlpHttpReceiver(_Spans):
    """`POST /v1/traces` on 127.0.0.1; `mode` may change while it runs.

    normal: decodes and answers an empty ExportTraceServiceResponse. slow: holds each answer until
    `release()`. refusing: answers 503 without decoding. After `stop()` the port refuses connections.
    """

    def __init__(self, mode: Mode = "normal") -> None:
        super().__init__()
        self.mode: Mode = mode
        self.headers: list[CIMultiDict[str]] = []
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT would name it."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner, self.port = await serve(app)

    async def stop(self) -> None:
        """Closes the server: the port refuses from now on."""
        self._released.set()  # held answers go, so the server can close
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Lets held (and future) answers of a slow receiver go."""
        self._released.set()

    async def _traces(self, request: web.Request) -> web.Response:
        self.headers.append(request.headers.copy())
        await self.arrived()
        if self.mode == "refusing":
            return web.Response(status=503)
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        if self.mode == "slow":
            await self._released.wait()
        await self.record(message, {k.lower(): v for k, v in request.headers.items()})
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: _Spans) -> None:
        self._spans = spans

    async def Export(
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportTraceServiceResponse:
        await self._spans.arrived()
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        await self._spans.record(request, metadata)
        return ExportTraceServiceResponse()


class OtlpGrpcReceiver(_Spans):
    """The TraceService/Export method on 127.0.0.1, plaintext, served by grpc.aio with the generated stubs."""

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        # The generated stubs carry no annotations.
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
