"""OTLP trace messages written straight to protobuf bytes: no SDK spans, no message objects, no I/O.

Why not the OpenTelemetry SDK: every request gets a server span (sampled 100 % in the benchmark) and
tracing on must keep at least 0.9x the throughput with it off. The gateway spends ~63 µs of CPU per
request, so a span gets ~6 µs. Measured here, the SDK's `tracer.start_span(...)` + `end()` with 15
attributes costs 14.6 µs, and its OTLP encoder (`trace_encoder.encode_spans`) 38 µs per span, run in
the BatchSpanProcessor's thread while holding the GIL. So a server span is encoded here, once, from the
finished exchange, and posted by our own small exporter (`tracing.SpanExporter`). Attributes whose
(key, value) repeat across requests (tenant, route, decision...) go through `cached_attribute`, so
their bytes are built once.

Field numbers follow opentelemetry-proto: `trace/v1/trace.proto`, `common/v1/common.proto`,
`resource/v1/resource.proto`, `collector/trace/v1/trace_service.proto`. The tests decode every
output with the generated `_pb2` classes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence

SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3

STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64_MASK = (1 << 64) - 1

# Tags are (field number << 3) | wire type; wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32.
# AnyValue
_ANY_STRING = b"\x0a"  # 1 string_value
_ANY_BOOL_TRUE = b"\x10\x01"  # 2 bool_value
_ANY_BOOL_FALSE = b"\x10\x00"  # oneof members carry presence: false must be written, or the value is unset
_ANY_INT = b"\x18"  # 3 int_value (int64: negatives are ten-byte two's complement varints)
_ANY_DOUBLE = b"\x21"  # 4 double_value (fixed64)
# KeyValue
_KV_KEY = b"\x0a"  # 1 key
_KV_VALUE = b"\x12"  # 2 value
# Span
_SPAN_TRACE_ID = b"\x0a\x10"  # 1 trace_id, always 16 bytes
_SPAN_SPAN_ID = b"\x12\x08"  # 2 span_id, always 8 bytes
_SPAN_TRACE_STATE = b"\x1a"  # 3 trace_state
_SPAN_PARENT_SPAN_ID = b"\x22\x08"  # 4 parent_span_id, 8 bytes (absent for a root span)
_SPAN_NAME = b"\x2a"  # 5 name
_SPAN_KIND = b"\x30"  # 6 kind (enum)
_SPAN_START = b"\x39"  # 7 start_time_unix_nano (fixed64)
_SPAN_END = b"\x41"  # 8 end_time_unix_nano (fixed64)
_SPAN_ATTRIBUTE = b"\x4a"  # 9 attributes
_SPAN_EVENT = b"\x5a"  # 11 events
_SPAN_STATUS = b"\x7a"  # 15 status
_SPAN_FLAGS = b"\x85\x01"  # 16 flags (fixed32): the tag, 133, needs two varint bytes
# Span.Event
_EVENT_TIME = b"\x09"  # 1 time_unix_nano (fixed64)
_EVENT_NAME = b"\x12"  # 2 name
_EVENT_ATTRIBUTE = 0x1A  # 3 attributes
# Status
_STATUS_MESSAGE = b"\x12"  # 2 message
_STATUS_CODE = b"\x18"  # 3 code (enum)
# Resource
_RESOURCE_ATTRIBUTE = b"\x0a"  # 1 attributes
# InstrumentationScope
_SCOPE_NAME = b"\x0a"  # 1 name
_SCOPE_VERSION = b"\x12"  # 2 version
# ScopeSpans
_SCOPE_SPANS_SCOPE = b"\x0a"  # 1 scope
_SCOPE_SPANS_SPAN = b"\x12"  # 2 spans
# ResourceSpans
_RESOURCE_SPANS_RESOURCE = b"\x0a"  # 1 resource
_RESOURCE_SPANS_SCOPE_SPANS = b"\x12"  # 2 scope_spans
# ExportTraceServiceRequest
_REQUEST_RESOURCE_SPANS = b"\x0a"  # 1 resource_spans

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
# Lengths under 128 are one varint byte: most strings and attributes are, so look them up.
_SMALL = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    """Base-128 varint of an unsigned n."""
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(text: str) -> bytes:
    # Protobuf strings must be valid UTF-8 and a collector rejects the whole request otherwise:
    # a lone surrogate (from surrogateescape decoding) becomes "?" rather than poisoning a batch.
    return text.encode("utf-8", "replace")


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any_value(value: str | bool | int | float) -> bytes:
    # bool before int: True is an int to Python, and must stay a bool_value on the wire.
    if isinstance(value, bool):
        return _ANY_BOOL_TRUE if value else _ANY_BOOL_FALSE
    if isinstance(value, str):
        return _field(_ANY_STRING, _utf8(value))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"attribute int {value} does not fit OTLP's int64")
        return _ANY_INT + _varint(value & _UINT64_MASK)
    if isinstance(value, float):
        return _ANY_DOUBLE + _double(value)
    raise TypeError(f"attribute value must be str, bool, int or float, not {type(value).__name__}")


def _key_value(key: str, value: str | bool | int | float) -> bytes:
    return _field(_KV_KEY, _utf8(key)) + _field(_KV_VALUE, _any_value(value))


def attribute(key: str, value: str | bool | int | float) -> bytes:
    """One encoded `Span.attributes` field (tag + KeyValue); concatenate them for `span(attributes=...)`."""
    return _field(_SPAN_ATTRIBUTE, _key_value(key, value))


# For (key, value) pairs that repeat across requests: tenant, route, decision, status code...
# typed=True: True == 1 == 1.0 as cache keys, and a plain lru_cache would hand back the int encoding for True.
cached_attribute = functools.lru_cache(maxsize=8192, typed=True)(attribute)


def _retag(attributes: bytes, tag: int) -> bytes:
    """Span.attributes fields (tag 9) rewritten under another field number, KeyValue bytes unchanged."""
    out = bytearray()
    pos, end = 0, len(attributes)
    while pos < end:
        if attributes[pos] != _SPAN_ATTRIBUTE[0]:
            raise ValueError("attributes must be a concatenation of attribute() outputs")
        length, shift, start = 0, 0, pos + 1
        while True:
            if start >= end:
                raise ValueError("attributes end inside a field")
            byte = attributes[start]
            start += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 128:
                break
        if start + length > end:
            raise ValueError("attributes end inside a field")
        out.append(tag)
        out += attributes[pos + 1 : start + length]
        pos = start + length
    return bytes(out)


def event(name: str, time_ns: int, attributes: bytes = b"") -> bytes:
    """One encoded Span.Event body (untagged); `attributes` is a concatenation of attribute() outputs."""
    return b"".join(
        (_EVENT_TIME, _fixed64(time_ns), _field(_EVENT_NAME, _utf8(name)), _retag(attributes, _EVENT_ATTRIBUTE))
    )


def span(
    trace_id: bytes,
    span_id: bytes,
    parent_span_id: bytes | None,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
    status: int = STATUS_UNSET,
    status_message: str = "",
    trace_state: str = "",
    flags: int | None = None,
    events: Sequence[bytes] = (),
) -> bytes:
    """One encoded Span body (untagged); `attributes` is a concatenation of attribute() outputs."""
    # A wrong-sized id makes the collector reject the whole request, not just this span: fail here.
    if len(trace_id) != 16 or len(span_id) != 8 or (parent_span_id is not None and len(parent_span_id) != 8):
        raise ValueError("trace ids are 16 bytes, span ids 8")
    parts = [_SPAN_TRACE_ID, trace_id, _SPAN_SPAN_ID, span_id]
    if trace_state:
        parts.append(_field(_SPAN_TRACE_STATE, _utf8(trace_state)))
    if parent_span_id is not None:
        parts += (_SPAN_PARENT_SPAN_ID, parent_span_id)
    parts += (
        _field(_SPAN_NAME, _utf8(name)),
        _SPAN_KIND,
        _varint(kind),
        _SPAN_START,
        _fixed64(start_ns),
        _SPAN_END,
        _fixed64(end_ns),
        attributes,
    )
    parts += (_field(_SPAN_EVENT, e) for e in events)
    if status or status_message:
        body = _field(_STATUS_MESSAGE, _utf8(status_message)) if status_message else b""
        if status:
            body += _STATUS_CODE + _varint(status)
        parts.append(_field(_SPAN_STATUS, body))
    if flags is not None:
        parts += (_SPAN_FLAGS, _fixed32(flags))
    return b"".join(parts)


def resource(attributes: Mapping[str, str | bool | int | float]) -> bytes:
    """One encoded Resource body (untagged)."""
    return b"".join(_field(_RESOURCE_ATTRIBUTE, _key_value(k, v)) for k, v in attributes.items())


def scope(name: str, version: str = "") -> bytes:
    """One encoded InstrumentationScope body (untagged)."""
    body = _field(_SCOPE_NAME, _utf8(name))
    if version:
        body += _field(_SCOPE_VERSION, _utf8(version))
    return body


def export_request(resource: bytes, scope: bytes, spans: Sequence[bytes]) -> bytes:
    """An ExportTraceServiceRequest: one ResourceSpans holding one ScopeSpans holding `spans`."""
    scope_spans = b"".join([_field(_SCOPE_SPANS_SCOPE, scope), *(_field(_SCOPE_SPANS_SPAN, s) for s in spans)])
    resource_spans = _field(_RESOURCE_SPANS_RESOURCE, resource) + _field(_RESOURCE_SPANS_SCOPE_SPANS, scope_spans)
    return _field(_REQUEST_RESOURCE_SPANS, resource_spans)
