"""Tracing configuration from OTEL_* variables, W3C traceparent parsing, and sampling decisions."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from gateway.telemetry import tracing
from gateway.telemetry.tracing import Parent, Sampler, TracingConfig, parse_traceparent, traceparent
from tests.support.fuzz import FUZZ, bounded, odd_text

ROOT = Path(__file__).resolve().parents[3]
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_HEX = "00f067aa0ba902b7"
TRACE_ID = bytes.fromhex(TRACE_HEX)
SPAN_ID = bytes.fromhex(SPAN_HEX)


def _config(env: dict[str, str]) -> TracingConfig:
    config = TracingConfig.from_env(env, "i-1")
    assert config is not None
    return config


# --- from_env ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
    ids=["no-endpoint", "empty-endpoint", "sdk-disabled", "sdk-disabled-upper", "exporter-none", "disabled-wins"],
)
def test_tracing_off(env: dict[str, str]) -> None:
    """No endpoint, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn tracing off (nothing else read)."""
    assert TracingConfig.from_env(env, "i-1") is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (ENDPOINT, {"endpoint": "http://collector:4318/v1/traces", "protocol": "http/protobuf"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp/"}, {"endpoint": "https://c.example/otlp/v1/traces"}),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"}, {"endpoint": "http://c:4318/custom"}),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/t"},
            {"endpoint": "http://traces:9999/t"},
        ),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, {"protocol": "http/protobuf"}),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            {"endpoint": "c:4317", "protocol": "grpc", "insecure": True},
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
            },
            {"endpoint": "c:4317", "insecure": False},
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            {"endpoint": "c:4317", "insecure": False},
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_INSECURE": "True",
            },
            {"endpoint": "c:4317", "insecure": True},
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "c:4317",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
                "OTEL_EXPORTER_OTLP_INSECURE": "false",
            },
            {"endpoint": "c:4317", "protocol": "grpc", "insecure": True},
        ),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%20cret%3D,X-Team = a ,, bad"},
            {"headers": (("api-key", "s cret="), ("x-team", "a"))},
        ),
        (
            {
                **ENDPOINT,
                "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
            },
            {"headers": (("b", "2"),)},
        ),
        (ENDPOINT, {"headers": (), "timeout": 10.0, "max_queue": 2048, "max_batch": 512, "delay": 5.0}),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}, {"timeout": 2.5}),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "700"},
            {"timeout": 0.7},
        ),
        (
            {
                **ENDPOINT,
                "OTEL_BSP_MAX_QUEUE_SIZE": "100",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100",
                "OTEL_BSP_SCHEDULE_DELAY": "250",
            },
            {"max_queue": 100, "max_batch": 100, "delay": 0.25},
        ),
        (ENDPOINT, {"sampler": Sampler("parentbased_always_on")}),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "always_on"}, {"sampler": Sampler("always_on")}),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "always_off"}, {"sampler": Sampler("always_off")}),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_always_off"}, {"sampler": Sampler("parentbased_always_off")}),
        (
            {**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"},
            {"sampler": Sampler("traceidratio", 0.25)},
        ),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "TraceIdRatio"}, {"sampler": Sampler("traceidratio", 1.0)}),
        (
            {**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
            {"sampler": Sampler("parentbased_traceidratio", 0.0)},
        ),
        (
            {**ENDPOINT, "OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "not read"},
            {"sampler": Sampler("always_on")},
        ),
    ],
    ids=[
        "http-default",
        "base-url-with-path",
        "traces-endpoint-as-is",
        "traces-endpoint-wins",
        "exporter-otlp",
        "grpc-http-scheme-insecure",
        "grpc-https-scheme-wins-over-insecure",
        "grpc-bare-secure",
        "grpc-bare-insecure",
        "grpc-traces-variables-win",
        "headers-url-decoded",
        "traces-headers-win",
        "defaults",
        "timeout-ms",
        "traces-timeout-wins",
        "batch-processor",
        "sampler-default",
        "sampler-always-on",
        "sampler-always-off",
        "sampler-parentbased-always-off",
        "sampler-ratio",
        "sampler-name-any-case-default-arg",
        "sampler-parentbased-ratio",
        "sampler-arg-ignored",
    ],
)
def test_from_env(env: dict[str, str], expected: dict[str, Any]) -> None:
    """Each standard variable sets its field; per-signal (TRACES_) variables win over generic ones."""
    config = _config(env)
    assert {name: getattr(config, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"service.name": "switchyard", "service.instance.id": "i-1"}),
        ({"OTEL_SERVICE_NAME": "edge"}, {"service.name": "edge"}),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs, deployment.environment.name = prod%20eu ,,a=b=c"},
            {"service.name": "from-attrs", "deployment.environment.name": "prod eu", "a": "b=c"},
        ),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "edge"},
            {"service.name": "edge"},
        ),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=other"}, {"service.instance.id": "i-1"}),
    ],
    ids=["defaults", "service-name", "resource-attributes", "service-name-wins", "instance-id-is-ours"],
)
def test_resource(env: dict[str, str], expected: dict[str, str]) -> None:
    """service.name defaults to switchyard; OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES; the instance id is ours."""
    resource = _config({**ENDPOINT, **env}).resource
    assert {key: resource.get(key) for key in expected} == expected


def test_resource_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the mapping passed in is read, not os.environ (which Resource.create would read)."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-process")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "leak=1")
    resource = _config(ENDPOINT).resource
    assert resource["service.name"] == "switchyard" and "leak" not in resource


def test_headers_stay_out_of_repr() -> None:
    """A logged config does not show the collector's API key."""
    config = _config({**ENDPOINT, "OTEL_EXPORTER_OTLP_HEADERS": "api-key=hunter2"})
    assert "hunter2" not in repr(config) and config.headers == (("api-key", "hunter2"),)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "/", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "ten"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "inf"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "1.5"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-0.1"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "region"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "=value"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ],
    ids=[
        "http-json",
        "traces-http-json",
        "unknown-protocol",
        "http-without-scheme",
        "http-other-scheme",
        "http-no-host",
        "grpc-other-scheme",
        "grpc-no-host",
        "exporter-zipkin",
        "exporter-list",
        "timeout-not-a-number",
        "timeout-zero",
        "timeout-negative",
        "timeout-nan",
        "timeout-inf",
        "queue-not-int",
        "batch-zero",
        "batch-over-queue",
        "delay-zero",
        "unknown-sampler",
        "sampler-arg-not-a-number",
        "sampler-arg-over-one",
        "sampler-arg-negative",
        "resource-item-without-value",
        "resource-item-without-key",
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], variable: str) -> None:
    """A value that cannot be honoured stops startup with the variable's name in the message."""
    with pytest.raises(ValueError, match=variable):
        TracingConfig.from_env({**ENDPOINT, **env}, "i-1")


def test_boolean_other_than_true_is_false_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """As the spec says: OTEL_SDK_DISABLED=yes is false, and a warning names the variable."""
    with caplog.at_level(logging.WARNING, logger="switchyard.tracing"):
        assert TracingConfig.from_env({**ENDPOINT, "OTEL_SDK_DISABLED": "yes"}, "i-1") is not None
    assert "OTEL_SDK_DISABLED" in caplog.text


# --- traceparent -------------------------------------------------------------------------------

VALID = f"00-{TRACE_HEX}-{SPAN_HEX}-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, Parent(TRACE_ID, SPAN_ID, True)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-00", Parent(TRACE_ID, SPAN_ID, False)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-03", Parent(TRACE_ID, SPAN_ID, True)),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-02", Parent(TRACE_ID, SPAN_ID, False)),
        (f"01-{TRACE_HEX}-{SPAN_HEX}-01", Parent(TRACE_ID, SPAN_ID, True)),
        (f"cc-{TRACE_HEX}-{SPAN_HEX}-01-what-the-future-holds", Parent(TRACE_ID, SPAN_ID, True)),
        (None, None),
        ("", None),
        ("garbage", None),
        (VALID.upper(), None),
        (f"00-{TRACE_HEX.upper()}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX.upper()}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-0A", None),
        (f"0A-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (f"00-{'0' * 32}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{'0' * 16}-01", None),
        (f"ff-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX[:-1]}-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}0-{SPAN_HEX}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX[:-1]}-01", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-1", None),
        (f"00-{TRACE_HEX}-{SPAN_HEX}-011", None),
        (f"0-{TRACE_HEX}-{SPAN_HEX}-01", None),
        (VALID + "-", None),
        (VALID + "-extra", None),
        (VALID + "\n", None),
        (" " + VALID, None),
        (f"cc-{TRACE_HEX}-{SPAN_HEX}-01x", None),
        (f"00_{TRACE_HEX}_{SPAN_HEX}_01", None),
        (f"00-{TRACE_HEX[:-1]}g-{SPAN_HEX}-01", None),
    ],
    ids=[
        "valid-sampled",
        "valid-not-sampled",
        "other-flags-sampled",
        "other-flags-not-sampled",
        "future-version",
        "future-version-more-fields",
        "absent",
        "empty",
        "garbage",
        "all-uppercase",
        "uppercase-trace-id",
        "uppercase-span-id",
        "uppercase-flags",
        "uppercase-version",
        "zero-trace-id",
        "zero-span-id",
        "version-ff",
        "short-trace-id",
        "long-trace-id",
        "short-span-id",
        "short-flags",
        "long-flags",
        "short-version",
        "v00-trailing-dash",
        "v00-more-fields",
        "trailing-newline",
        "leading-space",
        "future-version-no-dash",
        "wrong-separators",
        "not-hex",
    ],
)
def test_parse_traceparent(value: str | None, expected: Parent | None) -> None:
    """W3C traceparent rules: lowercase hex, fixed lengths, no zero ids, no version ff."""
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("state", "kept"),
    [
        ("vendor=abc,other=1", "vendor=abc,other=1"),
        (None, ""),
        ("k=" + "v" * 510, "k=" + "v" * 510),
        ("k=" + "v" * 511, ""),
    ],
    ids=["kept", "absent", "512-chars", "513-chars-dropped"],
)
def test_tracestate(state: str | None, kept: str) -> None:
    """tracestate rides along with a valid traceparent when at most 512 characters."""
    parent = parse_traceparent(VALID, state)
    assert parent is not None and parent.trace_state == kept


def test_tracestate_without_valid_traceparent_is_dropped() -> None:
    """No parent, no tracestate."""
    assert parse_traceparent("garbage", "vendor=abc") is None


# Nearly valid headers (the right shape with odd text around or inside it) as well as any text.
def _hex(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdefF", min_size=n, max_size=n)


_near = st.builds(
    lambda version, trace, span, flags, rest: f"{version}-{trace}-{span}-{flags}{rest}",
    _hex(2) | odd_text,
    _hex(32),
    _hex(16),
    _hex(2) | odd_text,
    st.just("") | odd_text,
)


@FUZZ
@given(st.one_of(st.none(), odd_text, _near), st.one_of(st.none(), odd_text))
@example(VALID + "\n", None)
@example(f"01-{TRACE_HEX}-{SPAN_HEX}-01-\udcff", "k=\udcff")
def test_any_header_is_a_parent_or_none(value: str | None, state: str | None) -> None:
    """parse_traceparent() on any traceparent and tracestate gives None or a well-formed Parent, never raises."""
    with bounded():
        parent = parse_traceparent(value, state)
    if parent is not None:
        assert len(parent.trace_id) == 16 and len(parent.span_id) == 8 and len(parent.trace_state) <= 512


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "not-sampled"])
def test_traceparent_round_trips(sampled: bool) -> None:
    """traceparent() writes what parse_traceparent() reads back."""
    value = traceparent(TRACE_ID, SPAN_ID, sampled)
    assert value == f"00-{TRACE_HEX}-{SPAN_HEX}-{'01' if sampled else '00'}"
    assert parse_traceparent(value) == Parent(TRACE_ID, SPAN_ID, sampled)


def test_new_ids_have_their_sizes() -> None:
    """Trace ids are 16 bytes and span ids 8, never all zero."""
    trace_ids = {tracing.new_trace_id() for _ in range(100)}
    span_ids = {tracing.new_span_id() for _ in range(100)}
    assert {len(t) for t in trace_ids} == {16} and {len(s) for s in span_ids} == {8}
    assert len(trace_ids) == len(span_ids) == 100
    assert bytes(16) not in trace_ids and bytes(8) not in span_ids


def test_new_ids_draw_again_on_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """An all-zero draw (invalid in W3C and OTLP) is drawn again."""
    draws = iter([0, 7, 0, 9])
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(draws))
    assert tracing.new_trace_id() == (7).to_bytes(16, "big")
    assert tracing.new_span_id() == (9).to_bytes(8, "big")


# --- sampling ----------------------------------------------------------------------------------

LOW = bytes(8) + (1).to_bytes(8, "big")  # lower 64 bits tiny: sampled at any ratio above 0
HIGH = bytes(8) + b"\xff" * 8  # lower 64 bits at the top: sampled only at ratio 1
SAMPLED = Parent(TRACE_ID, SPAN_ID, True)
UNSAMPLED = Parent(TRACE_ID, SPAN_ID, False)


@pytest.mark.parametrize(
    ("sampler", "trace_id", "parent", "expected"),
    [
        (Sampler("always_on"), HIGH, None, True),
        (Sampler("always_on"), HIGH, UNSAMPLED, True),
        (Sampler("always_off"), LOW, None, False),
        (Sampler("always_off"), LOW, SAMPLED, False),
        (Sampler("parentbased_always_on"), HIGH, None, True),
        (Sampler("parentbased_always_on"), HIGH, SAMPLED, True),
        (Sampler("parentbased_always_on"), HIGH, UNSAMPLED, False),
        (Sampler("parentbased_always_off"), LOW, None, False),
        (Sampler("parentbased_always_off"), LOW, SAMPLED, True),
        (Sampler("parentbased_always_off"), LOW, UNSAMPLED, False),
        (Sampler("traceidratio", 0.5), LOW, None, True),
        (Sampler("traceidratio", 0.5), HIGH, None, False),
        (Sampler("traceidratio", 0.5), HIGH, SAMPLED, False),
        (Sampler("traceidratio", 0.5), LOW, UNSAMPLED, True),
        (Sampler("traceidratio", 0.5), b"\xff" * 8 + (1 << 63).to_bytes(8, "big"), None, False),
        (Sampler("traceidratio", 0.5), b"\xff" * 8 + ((1 << 63) - 1).to_bytes(8, "big"), None, True),
        (Sampler("traceidratio", 0.0), LOW, None, False),
        (Sampler("traceidratio", 1.0), HIGH, None, True),
        (Sampler("parentbased_traceidratio", 0.5), HIGH, None, False),
        (Sampler("parentbased_traceidratio", 0.5), HIGH, SAMPLED, True),
        (Sampler("parentbased_traceidratio", 0.5), LOW, UNSAMPLED, False),
    ],
    ids=[
        "on",
        "on-ignores-parent",
        "off",
        "off-ignores-parent",
        "pb-on-root",
        "pb-on-sampled-parent",
        "pb-on-unsampled-parent",
        "pb-off-root",
        "pb-off-sampled-parent",
        "pb-off-unsampled-parent",
        "ratio-low",
        "ratio-high",
        "ratio-ignores-sampled-parent",
        "ratio-ignores-unsampled-parent",
        "ratio-at-bound",
        "ratio-under-bound-upper-bytes-ignored",
        "ratio-zero",
        "ratio-one",
        "pb-ratio-root",
        "pb-ratio-sampled-parent",
        "pb-ratio-unsampled-parent",
    ],
)
def test_sampler(sampler: Sampler, trace_id: bytes, parent: Parent | None, expected: bool) -> None:
    """Each sampler's decision for a root span and for sampled and unsampled parents."""
    assert sampler.sampled(trace_id, parent) is expected


@given(trace_id=st.binary(min_size=16, max_size=16), ratio=st.floats(min_value=0.0, max_value=1.0))
def test_ratio_sampler_agrees_with_the_sdk(trace_id: bytes, ratio: float) -> None:
    """traceidratio keeps exactly the traces the SDK's TraceIdRatioBased keeps."""
    sdk = TraceIdRatioBased(ratio).should_sample(None, int.from_bytes(trace_id, "big"), "span")
    assert Sampler("traceidratio", ratio).sampled(trace_id, None) is (sdk.decision == Decision.RECORD_AND_SAMPLE)


@pytest.mark.parametrize(("name", "ratio"), [("bogus", 1.0), ("traceidratio", 1.5), ("traceidratio", -0.5)])
def test_sampler_refuses_bad_settings(name: str, ratio: float) -> None:
    """An unknown name or a ratio outside [0, 1] raises."""
    with pytest.raises(ValueError, match="sampler"):
        Sampler(name, ratio)


def test_grpc_is_not_imported_for_http() -> None:
    """http/protobuf users never load grpc: it is imported only when a gRPC exporter starts."""
    code = "import sys, gateway.telemetry.tracing; assert 'grpc' not in sys.modules, 'grpc imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
