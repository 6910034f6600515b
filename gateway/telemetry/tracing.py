"""Tracing configuration from the standard OTEL_* variables, and the span exporter (W3C trace
context is protocol/tracecontext.py).

Why not the OpenTelemetry SDK's tracer and BatchSpanProcessor: every request gets a server span
(sampled 100 % in the benchmark) and tracing on must keep at least 0.9x the throughput with it off.
The gateway spends ~63 µs of CPU per request, so a span gets ~6 µs. Measured here, the SDK's
`start_span` + `end()` with 15 attributes costs 14.6 µs and its OTLP encoder 38 µs per span, in the
processor's thread holding the GIL. So spans arrive here already encoded (`otlp.span`), and
`SpanExporter` only queues bytes, frames one ExportTraceServiceRequest per batch and posts it, from
a task on the gateway's own loop. It exports to an OTLP collector over http/protobuf (aiohttp) or
gRPC (grpc.aio, imported only when configured).

The SDK still supplies what is not per request: `parse_env_headers` and the `Resource` rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.util.re import parse_env_headers

from gateway.protocol.tracecontext import Parent
from gateway.telemetry import otlp

log = logging.getLogger("switchyard.tracing")

N = TypeVar("N", int, float)

ExportProtocol = Literal["http/protobuf", "grpc"]
AttributeValue = str | int | float | bool

DEFAULT_SERVICE_NAME = "switchyard"
SCOPE_NAME = "switchyard"
GRPC_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


# --- Sampling ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    """One of the spec's OTEL_TRACES_SAMPLER values; `ratio` is used by the traceidratio ones."""

    name: str = "parentbased_always_on"
    ratio: float = 1.0
    _bound: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in _SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}: one of {', '.join(_SAMPLERS)}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"sampler ratio {self.ratio} is not within [0, 1]")
        # As the SDK's TraceIdRatioBased: sample when the trace id's lower 64 bits are under the bound,
        # so every service sampling at the same ratio keeps the same traces.
        object.__setattr__(self, "_bound", round(self.ratio * (1 << 64)))

    def sampled(self, trace_id: bytes, parent: Parent | None) -> bool:
        """Whether a span of this trace, under this parent (None for a root span), is recorded."""
        name = self.name
        if parent is not None and name.startswith("parentbased_"):
            return parent.sampled
        if name.endswith("always_on"):
            return True
        if name.endswith("always_off"):
            return False
        return int.from_bytes(trace_id[8:16], "big") < self._bound


# --- Configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TracingConfig:
    """Where and how spans are exported, read once from the OTEL_* variables."""

    # http: the full traces URL; grpc: host:port. Out of repr too: a URL can carry a key.
    endpoint: str = field(repr=False)
    protocol: ExportProtocol
    # Collector headers are usually API keys: kept out of repr so a logged config leaks none.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    timeout: float  # seconds, per export
    resource: Mapping[str, AttributeValue]
    sampler: Sampler
    max_queue: int = 2048
    max_batch: int = 512
    delay: float = 5.0  # seconds
    insecure: bool = False  # grpc only: plaintext instead of TLS

    @classmethod
    def from_env(cls, env: Mapping[str, str], instance_id: str) -> TracingConfig | None:
        """The configuration the standard variables describe, or None when tracing is off."""
        if _flag(env, "OTEL_SDK_DISABLED"):
            return None
        exporters = {e.strip() for e in _get(env, "OTEL_TRACES_EXPORTER", default="otlp")[1].split(",")}
        if exporters == {"none"}:
            return None
        if exporters != {"otlp"}:
            raise ValueError(f"OTEL_TRACES_EXPORTER={','.join(sorted(exporters))}: only otlp or none is supported")
        name, endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            return None  # tracing is opt-in: no collector named, no spans
        protocol_name, protocol = _get(
            env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", default="http/protobuf"
        )
        insecure = False
        kind: ExportProtocol
        if protocol == "http/protobuf":
            kind, target = "http/protobuf", _http_endpoint(name, endpoint)
        elif protocol == "grpc":
            kind, (target, insecure) = "grpc", _grpc_endpoint(name, endpoint, env)
        elif protocol == "http/json":
            raise ValueError(f"{protocol_name}=http/json is not supported: use http/protobuf or grpc")
        else:
            raise ValueError(f"{protocol_name}={protocol!r}: use http/protobuf or grpc")
        headers = parse_env_headers(
            _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")[1], liberal=True
        )
        timeout_ms = _number(env, float, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT", default=1e4)
        max_queue = _number(env, int, "OTEL_BSP_MAX_QUEUE_SIZE", default=2048)
        max_batch = _number(env, int, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default=512)
        if max_batch > max_queue:
            raise ValueError(f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={max_batch} is over OTEL_BSP_MAX_QUEUE_SIZE={max_queue}")
        return cls(
            endpoint=target,
            protocol=kind,
            headers=tuple(headers.items()),
            timeout=timeout_ms / 1000,  # the spec gives OTLP timeouts in milliseconds
            resource=_resource(env, instance_id),
            sampler=_sampler(env),
            max_queue=max_queue,
            max_batch=max_batch,
            delay=_number(env, float, "OTEL_BSP_SCHEDULE_DELAY", default=5000) / 1000,
            insecure=insecure,
        )


def _get(env: Mapping[str, str], *names: str, default: str = "") -> tuple[str, str]:
    """(name, value) of the first variable set; the spec treats an empty value as unset."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return names[0], default


def _flag(env: Mapping[str, str], *names: str) -> bool:
    # The spec: only a case-insensitive "true" is true, anything else is false, with a warning.
    name, value = _get(env, *names)
    if value.lower() not in ("", "true", "false"):
        log.warning("%s=%s is neither true nor false: taken as false", name, value)
    return value.lower() == "true"


def _number(env: Mapping[str, str], kind: type[N], *names: str, default: N) -> N:
    # Unlike the SDK (warn, use the default) a bad number stops startup: the operator meant something.
    name, value = _get(env, *names)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name}={value!r} must be a positive number")
    return number


def _http_endpoint(name: str, value: str) -> str:
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"{name}={value!r} is not an http(s) URL")
    # The spec: the per-signal variable is the traces URL as is; the generic one is a base URL.
    return value if name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" else value.rstrip("/") + "/v1/traces"


def _grpc_endpoint(name: str, value: str, env: Mapping[str, str]) -> tuple[str, bool]:
    # The spec: a scheme decides TLS (http plaintext, https TLS); OTEL_EXPORTER_OTLP_INSECURE only
    # applies to an endpoint written without one, as host:port.
    if "://" not in value:
        if not value.rstrip("/"):
            raise ValueError(f"{name}={value!r} names no host")
        return value.rstrip("/"), _flag(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"{name}={value!r}: write host:port, http://host:port or https://host:port")
    return url.netloc, url.scheme == "http"


def _resource(env: Mapping[str, str], instance_id: str) -> dict[str, AttributeValue]:
    """service.name and OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME as the SDK merges them, read from `env`."""
    # Resource.create() would read os.environ, not the mapping we were given: so the SDK's detector rules
    # (comma-separated k=v, values url-decoded, OTEL_SERVICE_NAME over service.name) are applied here,
    # and Resource.merge does the rest. Only these and the instance id go in: a resource rides on every
    # export, so nothing from the gateway's settings (tokens, URLs) may.
    detected: dict[str, AttributeValue] = {}
    name, items = _get(env, "OTEL_RESOURCE_ATTRIBUTES")
    for item in filter(None, (i.strip() for i in items.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: {item!r} is not key=value")
        detected[key.strip()] = unquote(value.strip())
    service = _get(env, "OTEL_SERVICE_NAME")[1]
    if service:
        detected[SERVICE_NAME] = service
    merged = (
        Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME})
        .merge(Resource(detected))
        .merge(Resource({SERVICE_INSTANCE_ID: instance_id}))
    )
    return {k: v for k, v in merged.attributes.items() if isinstance(v, str | bool | int | float)}


def _sampler(env: Mapping[str, str]) -> Sampler:
    name_var, name = _get(env, "OTEL_TRACES_SAMPLER", default="parentbased_always_on")
    name = name.lower()
    if name not in _SAMPLERS:
        raise ValueError(f"{name_var}={name!r}: one of {', '.join(_SAMPLERS)}")
    if not name.endswith("traceidratio"):
        return Sampler(name)
    arg_var, arg = _get(env, "OTEL_TRACES_SAMPLER_ARG", default="1.0")
    try:
        ratio = float(arg)
    except ValueError:
        raise ValueError(f"{arg_var}={arg!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{arg_var}={arg!r} is not a ratio within [0, 1]")
    return Sampler(name, ratio)


# --- Export ------------------------------------------------------------------------------------


class _Transport(Protocol):
    async def send(self, body: bytes) -> None:
        """Deliver one ExportTraceServiceRequest; raise if the collector did not accept it."""

    async def close(self) -> None: ...


class _ExportRefused(Exception):
    pass


class _HttpTransport:
    def __init__(self, config: TracingConfig) -> None:
        # A session of its own, without the app's TraceConfig: exporting spans must not make spans.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=config.timeout))
        self._url = config.endpoint
        self._headers = {**dict(config.headers), "Content-Type": "application/x-protobuf"}

    async def send(self, body: bytes) -> None:
        async with self._session.post(self._url, data=body, headers=self._headers) as response:
            await response.read()  # read to the end so the connection is kept for the next batch
            if not 200 <= response.status < 300:
                raise _ExportRefused(f"HTTP {response.status}")

    async def close(self) -> None:
        await self._session.close()


class _GrpcTransport:
    def __init__(self, config: TracingConfig) -> None:
        # Imported here: grpc is large and starts threads of its own; http/protobuf users never load it.
        import grpc

        if config.insecure:
            self._channel = grpc.aio.insecure_channel(config.endpoint)
        else:
            self._channel = grpc.aio.secure_channel(config.endpoint, grpc.ssl_channel_credentials())
        # No serializers: the request is already protobuf bytes, and the response (partial_success) is ignored.
        self._export = self._channel.unary_unary(
            GRPC_EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        self._metadata = tuple((key.lower(), value) for key, value in config.headers)  # gRPC wants lowercase keys
        self._timeout = config.timeout

    async def send(self, body: bytes) -> None:
        await self._export(body, timeout=self._timeout, metadata=self._metadata)

    async def close(self) -> None:
        await self._channel.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time"
    # grpc.aio.AioRpcError, recognised without importing grpc: its str() is a multi-line debug dump.
    code, details = getattr(error, "code", None), getattr(error, "details", None)
    if callable(code) and callable(details):
        return f"gRPC {getattr(code(), 'name', code())}: {details()}"
    return str(error) or type(error).__name__


def _version() -> str:
    try:
        return importlib.metadata.version("switchyard")
    except importlib.metadata.PackageNotFoundError:
        return ""


# After a failed export, how long new spans are counted as dropped instead of made and sent.
FAILURE_REST = 1.0


def _ignore(n: int, reason: str) -> None:
    pass


class SpanExporter:
    """Encoded spans in, batches out, never blocking or failing a request.

    `submit` queues (bounded: beyond `max_queue` the newest spans are dropped and counted); a task
    exports a batch when `max_batch` are queued, or everything queued every `delay`. At most one
    export is in flight, and it is bounded by the timeout, so a collector that accepts connections
    and never answers holds at most `max_queue` + `max_batch` spans. No retries: a failed batch is
    counted (`on_dropped(n, "export_failed")`) and the next one tried. Reasons passed to
    `on_dropped`: "queue_full", "export_failed", and "shutdown" for spans submitted after, or left
    unsent by, `shutdown`.
    """

    def __init__(self, config: TracingConfig, *, on_dropped: Callable[[int, str], None] = _ignore) -> None:
        self._config = config
        self._on_dropped = on_dropped
        self._max_queue = config.max_queue
        self._max_batch = config.max_batch
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._resource = otlp.resource(config.resource)
        self._scope = otlp.scope(SCOPE_NAME, _version())
        self._transport: _Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False
        self._resting_until = 0.0  # loop time before which the collector is not tried again

    @property
    def accepting(self) -> bool:
        """False while shut down, or resting after a failed export: spans made now would only be
        dropped, so callers need not encode them (`discard` counts them instead)."""
        if self._closing:
            return False
        return not self._resting_until or asyncio.get_running_loop().time() >= self._resting_until

    def discard(self, n: int) -> None:
        """Count `n` spans that were not made because the exporter was not accepting."""
        self._drop(n, "shutdown" if self._closing else "export_failed")

    @property
    def queued(self) -> int:
        """Spans waiting for an export (not counting the batch in flight)."""
        return len(self._queue)

    def submit(self, spans: list[bytes]) -> None:
        """Queue encoded spans (`otlp.span` outputs); never blocks, never raises."""
        if not spans:
            return
        if self._closing:
            self._drop(len(spans), "shutdown")
            return
        room = self._max_queue - len(self._queue)
        if len(spans) > room:
            self._drop(len(spans) - room, "queue_full")
            spans = spans[:room]
        self._queue.extend(spans)
        if len(self._queue) >= self._max_batch:
            self._wake.set()

    async def start(self) -> None:
        """Open the transport and start the export task (on the running loop)."""
        if self._task is not None:
            raise RuntimeError("SpanExporter already started")
        if self._config.protocol == "grpc":
            self._transport = _GrpcTransport(self._config)
        else:
            self._transport = _HttpTransport(self._config)
        self._task = asyncio.create_task(self._run(), name="otlp-span-exporter")

    # The timeout is a parameter, not the caller's asyncio.timeout: on expiry the exporter still counts
    # what it drops and closes its transport, which a cancellation from outside would skip.
    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109
        """Export what is queued, giving up after `timeout` seconds, then close the transport."""
        if self._closing:
            return
        if self._task is None and self._queue:
            await self.start()
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # On timeout wait_for cancels the task, which counts the batch in flight as dropped.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout)
        if self._queue:
            self._drop(len(self._queue), "shutdown")
            self._queue.clear()
        if self._transport is not None:
            await self._transport.close()

    async def _run(self) -> None:
        while True:
            timed_out = False
            if not self._closing and len(self._queue) < self._max_batch:
                timed_out = await self._sleep()
            self._wake.clear()
            # Full batches go at once; a partial one waits for the delay, so a steady trickle of
            # end-of-request submits makes one request per `delay`, not one per submit.
            while len(self._queue) >= self._max_batch or (self._queue and (timed_out or self._closing)):
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                await self._export(batch)
            if self._closing:
                return

    async def _sleep(self) -> bool:
        """Wait for a full batch or shutdown; True when `delay` passed first."""
        try:
            async with asyncio.timeout(self._config.delay):
                await self._wake.wait()
        except TimeoutError:
            return True
        return False

    async def _export(self, batch: list[bytes]) -> None:
        assert self._transport is not None
        body = otlp.export_request(self._resource, self._scope, batch)
        try:
            # The transports have timeouts of their own; this one also covers what they do not (DNS, TLS,
            # a grpc channel stuck connecting), so the single in-flight slot is always freed.
            async with asyncio.timeout(self._config.timeout):
                await self._transport.send(body)
        except asyncio.CancelledError:
            self._drop(len(batch), "shutdown")
            raise
        except Exception as error:  # any failure of any transport: telemetry never takes the gateway down
            self._drop(len(batch), "export_failed")
            # A collector that is down is not tried again for a while, and meanwhile callers
            # skip encoding spans that would be dropped (measured: building and failing to send
            # them cost a down collector ~5 % of throughput).
            self._resting_until = asyncio.get_running_loop().time() + FAILURE_REST
            if not self._failing:
                # Once per failure streak: a collector that is down must not flood the log.
                self._failing = True
                log.warning(
                    "exporting spans to %s failed (%s); dropping them until it answers",
                    _where(self._config.endpoint),
                    _describe(error),
                )
            return
        self._resting_until = 0.0
        if self._failing:
            self._failing = False
            log.info("exporting spans to %s works again", _where(self._config.endpoint))

    def _drop(self, n: int, reason: str) -> None:
        try:
            self._on_dropped(n, reason)
        except Exception:  # a broken counter must not fail the request that submitted the span
            log.exception("on_dropped(%d, %r) failed", n, reason)


def _where(endpoint: str) -> str:
    """The endpoint as a log may show it: scheme, host and port only (a URL's user:key@ or
    ?api_key= would put a collector's credential in the log)."""
    parts = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme + '://' if parts.scheme else ''}{host}{port}"
