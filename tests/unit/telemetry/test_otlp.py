"""Hand-written OTLP protobuf, checked by decoding it with opentelemetry-proto's generated classes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.telemetry import otlp
from tests.support.otlp import Value, any_value, attributes

TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(0xA1, 0xA9))
PARENT_ID = bytes(range(0xB1, 0xB9))
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

Scalar = str | bool | int | float


def _decode(*spans: bytes, resource: bytes = b"", scope: bytes = b"") -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(otlp.export_request(resource, scope, spans))
    return message


def _one(span: bytes) -> Span:
    message = _decode(span)
    (resource_spans,) = message.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    assert len(scope_spans.spans) == 1
    decoded: Span = scope_spans.spans[0]
    return decoded


def _span(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "parent_span_id": PARENT_ID,
        "name": "POST /twilio/voice",
        "kind": otlp.SPAN_KIND_SERVER,
        "start_ns": 1_700_000_000_123_456_789,
        "end_ns": 1_700_000_000_223_456_789,
        "attributes": b"",
    }
    fields.update(overrides)
    return otlp.span(**fields)  # type: ignore[arg-type]


def _typed(value: Value) -> tuple[str, Value]:
    return type(value).__name__, value


def test_span_fields() -> None:
    """Ids, name, kind, times, trace state and flags arrive as given."""
    decoded = _one(_span(trace_state="vendor=abc,other=1", flags=0x301))
    assert decoded.trace_id == TRACE_ID
    assert decoded.span_id == SPAN_ID
    assert decoded.parent_span_id == PARENT_ID
    assert decoded.name == "POST /twilio/voice"
    assert decoded.kind == Span.SPAN_KIND_SERVER
    assert decoded.start_time_unix_nano == 1_700_000_000_123_456_789
    assert decoded.end_time_unix_nano == 1_700_000_000_223_456_789
    assert decoded.trace_state == "vendor=abc,other=1"
    assert decoded.flags == 0x301
    assert not decoded.HasField("status")
    assert list(decoded.attributes) == [] and list(decoded.events) == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (otlp.SPAN_KIND_INTERNAL, Span.SPAN_KIND_INTERNAL),
        (otlp.SPAN_KIND_SERVER, Span.SPAN_KIND_SERVER),
        (otlp.SPAN_KIND_CLIENT, Span.SPAN_KIND_CLIENT),
    ],
    ids=["internal", "server", "client"],
)
def test_span_kinds(kind: int, expected: int) -> None:
    """Our kind constants are the proto's enum values."""
    assert _one(_span(kind=kind)).kind == expected


def test_root_span_has_empty_parent_and_no_optional_fields() -> None:
    """parent_span_id=None leaves the parent empty; no trace state or flags unless given."""
    decoded = _one(_span(parent_span_id=None))
    assert decoded.parent_span_id == b""
    assert decoded.trace_state == "" and decoded.flags == 0


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (otlp.STATUS_ERROR, "upstream timed out", Status.STATUS_CODE_ERROR),
        (otlp.STATUS_OK, "", Status.STATUS_CODE_OK),
        (otlp.STATUS_ERROR, "", Status.STATUS_CODE_ERROR),
    ],
    ids=["error-with-message", "ok", "error-bare"],
)
def test_status(status: int, message: str, code: int) -> None:
    """Status code and message land in Span.status."""
    decoded = _one(_span(status=status, status_message=message))
    assert decoded.HasField("status")
    assert (decoded.status.code, decoded.status.message) == (code, message)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("plain", "string_value"),
        ("", "string_value"),
        ("héllo wörld ✓ 電話 🚀", "string_value"),
        ("x" * 20_000, "string_value"),
        (True, "bool_value"),
        (False, "bool_value"),
        (0, "int_value"),
        (200, "int_value"),
        (-1, "int_value"),
        (-123_456_789_012, "int_value"),
        (INT64_MIN, "int_value"),
        (INT64_MAX, "int_value"),
        (0.0, "double_value"),
        (-2.5, "double_value"),
        (0.000123, "double_value"),
        (math.inf, "double_value"),
    ],
    ids=[
        "ascii",
        "empty",
        "unicode",
        "long",
        "true",
        "false",
        "zero",
        "int",
        "minus-one",
        "negative",
        "int64-min",
        "int64-max",
        "zero-float",
        "negative-float",
        "small-float",
        "inf",
    ],
)
def test_attribute_types(value: Scalar, field: str) -> None:
    """Each Python type lands in its AnyValue member (bool not as int), with its exact value."""
    decoded = _one(_span(attributes=otlp.attribute("k.é", value)))
    (pair,) = decoded.attributes
    assert pair.key == "k.é"
    assert pair.value.WhichOneof("value") == field
    assert _typed(any_value(pair.value)) == _typed(value)


def test_attributes_keep_their_order() -> None:
    """Concatenated attribute() outputs decode as that many attributes, in order."""
    encoded = otlp.attribute("a", "1") + otlp.cached_attribute("b", 2) + otlp.attribute("c", True)
    decoded = _one(_span(attributes=encoded))
    assert [kv.key for kv in decoded.attributes] == ["a", "b", "c"]
    assert attributes(decoded.attributes) == {"a": "1", "b": 2, "c": True}


def test_cached_attribute_is_attribute_built_once() -> None:
    """cached_attribute returns attribute()'s bytes, the same object on a repeat."""
    first = otlp.cached_attribute("switchyard.tenant.id", "acme-test-cache")
    assert first == otlp.attribute("switchyard.tenant.id", "acme-test-cache")
    assert otlp.cached_attribute("switchyard.tenant.id", "acme-test-cache") is first


def test_cached_attribute_keeps_equal_values_of_other_types_apart() -> None:
    """1, True and 1.0 are equal dict keys, yet each is cached with its own type."""
    cached = [otlp.cached_attribute("flag.cache", v) for v in (1, True, 1.0)]
    kinds = [_one(_span(attributes=a)).attributes[0].value.WhichOneof("value") for a in cached]
    assert kinds == ["int_value", "bool_value", "double_value"]


@pytest.mark.parametrize("value", [INT64_MAX + 1, INT64_MIN - 1], ids=["over", "under"])
def test_int_outside_int64_is_refused(value: int) -> None:
    """An int OTLP cannot hold raises rather than wrapping around."""
    with pytest.raises(ValueError, match="int64"):
        otlp.attribute("n", value)


def test_unsupported_value_type_is_refused() -> None:
    """Only str, bool, int and float are attribute values."""
    with pytest.raises(TypeError, match="bytes"):
        otlp.attribute("b", b"raw")  # type: ignore[arg-type]


def test_lone_surrogate_becomes_replacement() -> None:
    """A string that is not valid Unicode still encodes to valid UTF-8, so the batch is not rejected."""
    decoded = _one(_span(name="bad\udcffname", attributes=otlp.attribute("k", "v\ud800")))
    assert decoded.name == "bad?name"
    assert decoded.attributes[0].value.string_value == "v?"


@pytest.mark.parametrize(
    "overrides",
    [{"trace_id": b"\x01" * 15}, {"span_id": b"\x01" * 9}, {"parent_span_id": b""}],
    ids=["short-trace-id", "long-span-id", "empty-parent"],
)
def test_wrong_id_sizes_are_refused(overrides: dict[str, bytes]) -> None:
    """Ids of the wrong size raise: a collector would reject the whole request."""
    with pytest.raises(ValueError, match="16 bytes"):
        _span(**overrides)


def test_events() -> None:
    """Events carry their name, time and attributes, in order."""
    first = otlp.event("exception", 1_700_000_000_000_000_001, otlp.attribute("exception.type", "Timeout"))
    second = otlp.event("retry", 5, otlp.attribute("n", -2) + otlp.cached_attribute("ok", False))
    decoded = _one(_span(events=[first, second, otlp.event("bare", 0)]))
    assert [(e.name, e.time_unix_nano) for e in decoded.events] == [
        ("exception", 1_700_000_000_000_000_001),
        ("retry", 5),
        ("bare", 0),
    ]
    assert attributes(decoded.events[0].attributes) == {"exception.type": "Timeout"}
    assert attributes(decoded.events[1].attributes) == {"n": -2, "ok": False}
    assert list(decoded.events[2].attributes) == []


@pytest.mark.parametrize(
    "attrs",
    [b"\x0a\x00", otlp.attribute("k", "v")[:-1], b"\x4a\xff"],
    ids=["wrong-tag", "truncated", "truncated-length"],
)
def test_event_refuses_what_is_not_attributes(attrs: bytes) -> None:
    """event() takes only concatenated attribute() outputs."""
    with pytest.raises(ValueError, match="attribute"):
        otlp.event("e", 1, attrs)


def test_export_request_resource_scope_and_spans() -> None:
    """One ResourceSpans with the resource, one ScopeSpans with the scope and every span in order."""
    resource = otlp.resource({"service.name": "switchyard", "service.instance.id": "i-1", "n": 3, "on": True})
    spans = [_span(name=f"span {i}", span_id=bytes([i + 1]) * 8) for i in range(3)]
    message = _decode(*spans, resource=resource, scope=otlp.scope("switchyard", "0.1.0"))
    (resource_spans,) = message.resource_spans
    assert attributes(resource_spans.resource.attributes) == {
        "service.name": "switchyard",
        "service.instance.id": "i-1",
        "n": 3,
        "on": True,
    }
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("switchyard", "0.1.0")
    assert [s.name for s in scope_spans.spans] == ["span 0", "span 1", "span 2"]
    assert [s.span_id for s in scope_spans.spans] == [b"\x01" * 8, b"\x02" * 8, b"\x03" * 8]


def test_export_request_without_spans_or_version() -> None:
    """An empty batch and a scope without version still decode."""
    message = _decode(scope=otlp.scope("s"))
    scope_spans = message.resource_spans[0].scope_spans[0]
    assert (scope_spans.scope.name, scope_spans.scope.version, list(scope_spans.spans)) == ("s", "", [])


scalars = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.floats(allow_nan=False),
)


@given(
    attrs=st.lists(st.tuples(st.text(), scalars), max_size=20),
    event_attrs=st.lists(st.tuples(st.text(), scalars), max_size=5),
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    name=st.text(),
    start=st.integers(min_value=0, max_value=(1 << 64) - 1),
    kind=st.integers(min_value=0, max_value=5),
)
def test_random_spans_round_trip(
    attrs: list[tuple[str, Scalar]],
    event_attrs: list[tuple[str, Scalar]],
    trace_id: bytes,
    span_id: bytes,
    name: str,
    start: int,
    kind: int,
) -> None:
    """Any attributes, ids, names and times decode to exactly what was encoded."""
    encoded = b"".join(otlp.attribute(k, v) for k, v in attrs)
    event_encoded = b"".join(otlp.attribute(k, v) for k, v in event_attrs)
    decoded = _one(
        otlp.span(
            trace_id, span_id, None, name, kind, start, start, encoded, events=[otlp.event(name, start, event_encoded)]
        )
    )
    assert (decoded.trace_id, decoded.span_id, decoded.name, decoded.kind) == (trace_id, span_id, name, kind)
    assert decoded.start_time_unix_nano == decoded.end_time_unix_nano == start
    assert [(kv.key, _typed(any_value(kv.value))) for kv in decoded.attributes] == [(k, _typed(v)) for k, v in attrs]
    (event,) = decoded.events
    assert [(kv.key, _typed(any_value(kv.value))) for kv in event.attributes] == [
        (k, _typed(v)) for k, v in event_attrs
    ]
