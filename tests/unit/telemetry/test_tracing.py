"""Tracing configuration from OTEL_* variables, and sampling decisions."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from gateway.protocol.tracecontext import Parent
from gateway.telemetry.tracing import Sampler, TracingConfig

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
