"""SpanExporter against real OTLP receivers on 127.0.0.1: delivery, failures, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from gateway.telemetry import otlp, tracing
from gateway.telemetry.tracing import SpanExporter, TracingConfig
from tests.support.otlp import OtlpGrpcReceiver, OtlpHttpReceiver

TRACE_ID = bytes(range(1, 17))


class Drops:
    """An on_dropped callback that counts per reason and lets a test wait for a count."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._changed = asyncio.Event()

    def __call__(self, n: int, reason: str) -> None:
        self.counts[reason] += n
        self._changed.set()

    async def wait_for(self, reason: str, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while self.counts[reason] < n:
                self._changed.clear()
                await self._changed.wait()


def _spans(n: int, start: int = 0, size: int = 0) -> list[bytes]:
    padding = otlp.attribute("padding", "x" * size) if size else b""
    return [
        otlp.span(
            TRACE_ID,
            (i + 1).to_bytes(8, "big"),
            None,
            f"span {i}",
            otlp.SPAN_KIND_SERVER,
            1_000 + i,
            2_000 + i,
            otlp.attribute("n", i) + otlp.cached_attribute("switchyard.tenant.id", "acme") + padding,
        )
        for i in range(start, start + n)
    ]


def _config(endpoint: str, **env: str) -> TracingConfig:
    defaults = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_MAX_QUEUE_SIZE": "8",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # partial batches wait: tests fill batches or shut down
    }
    config = TracingConfig.from_env({**defaults, **env}, "i-test")
    assert config is not None
    return config


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpHttpReceiver]:
    receiver = OtlpHttpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def grpc_receiver() -> AsyncIterator[OtlpGrpcReceiver]:
    receiver = OtlpGrpcReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def drops() -> Drops:
    return Drops()


async def test_http_export_delivers_decodable_spans(receiver: OtlpHttpReceiver, drops: Drops) -> None:
    """A full batch is posted at once as protobuf, with the configured headers, resource and scope."""
    config = _config(receiver.url, OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20t0k,x-team=edge")
    exporter = SpanExporter(config, on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(4))
    received = await receiver.wait_for(4)
    assert [r.span.name for r in received] == ["span 0", "span 1", "span 2", "span 3"]
    assert [r.span.span_id for r in received] == [(i + 1).to_bytes(8, "big") for i in range(4)]
    assert all(r.span.trace_id == TRACE_ID and r.span.parent_span_id == b"" for r in received)
    assert received[3].attributes == {"n": 3, "switchyard.tenant.id": "acme"}
    assert received[0].resource["service.name"] == "switchyard"
    assert received[0].resource["service.instance.id"] == "i-test"
    assert received[0].scope == "switchyard"
    (headers,) = receiver.headers
    assert headers["Content-Type"] == "application/x-protobuf"
    assert (headers["authorization"], headers["x-team"]) == ("Bearer t0k", "edge")
    await exporter.shutdown(5)
    assert drops.counts == Counter()


async def test_partial_batch_goes_after_the_delay(receiver: OtlpHttpReceiver) -> None:
    """Fewer spans than a batch are exported once the schedule delay passes."""
    exporter = SpanExporter(_config(receiver.url, OTEL_BSP_SCHEDULE_DELAY="20"))
    await exporter.start()
    exporter.submit(_spans(1))
    assert [r.span.name for r in await receiver.wait_for(1)] == ["span 0"]
    await exporter.shutdown(5)


async def test_batches_are_cut_at_max_batch(receiver: OtlpHttpReceiver) -> None:
    """Ten spans with batches of four make requests of 4, 4 and (at shutdown) 2."""
    exporter = SpanExporter(_config(receiver.url, OTEL_BSP_MAX_QUEUE_SIZE="16"))
    await exporter.start()
    exporter.submit(_spans(10))
    await receiver.wait_for(8)
    await exporter.shutdown(5)
    assert len(receiver.spans) == 10 and receiver.requests == 3


async def test_grpc_export_delivers_decodable_spans(grpc_receiver: OtlpGrpcReceiver, drops: Drops) -> None:
    """Over gRPC the same batch arrives through TraceService/Export, headers as lowercase metadata."""
    config = _config(
        f"http://{grpc_receiver.target}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_HEADERS="X-Api-Key=k1"
    )
    assert config.insecure
    exporter = SpanExporter(config, on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(4))
    received = await grpc_receiver.wait_for(4)
    assert [r.span.name for r in received] == ["span 0", "span 1", "span 2", "span 3"]
    assert received[0].resource["service.instance.id"] == "i-test"
    assert grpc_receiver.metadata[0]["x-api-key"] == "k1"
    await exporter.shutdown(5)
    assert drops.counts == Counter()


async def test_grpc_receiver_down_counts_failures(drops: Drops) -> None:
    """A gRPC collector that is not there fails the export, counted, without raising."""
    gone = OtlpGrpcReceiver()
    await gone.start()
    await gone.stop()
    exporter = SpanExporter(
        _config(f"http://{gone.target}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_TIMEOUT="2000"),
        on_dropped=drops,
    )
    await exporter.start()
    exporter.submit(_spans(4))
    await drops.wait_for("export_failed", 4)
    await exporter.shutdown(5)


async def test_stopped_receiver(receiver: OtlpHttpReceiver, drops: Drops, caplog: pytest.LogCaptureFixture) -> None:
    """A port that refuses: batches counted as failed, one warning, submit never raises, shutdown is bounded."""
    await receiver.stop()
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    with caplog.at_level(logging.WARNING, logger="switchyard.tracing"):
        for i in range(3):
            exporter.submit(_spans(4, start=4 * i))
            await drops.wait_for("export_failed", 4 * (i + 1))
        exporter.submit(_spans(3))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await exporter.shutdown(1.0)
        assert loop.time() - started < 1.0
    assert drops.counts == Counter(export_failed=15)
    warnings = [r for r in caplog.records if r.name == "switchyard.tracing" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and receiver.url in warnings[0].getMessage()


async def test_refusing_then_recovering(
    receiver: OtlpHttpReceiver, drops: Drops, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 fails the batch; one warning per failure streak, an info line when exports work again."""
    receiver.mode = "refusing"
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    with caplog.at_level(logging.INFO, logger="switchyard.tracing"):
        exporter.submit(_spans(4))
        await drops.wait_for("export_failed", 4)
        exporter.submit(_spans(4))
        await drops.wait_for("export_failed", 8)
        receiver.mode = "normal"
        exporter.submit(_spans(4, start=8))
        await receiver.wait_for(4)
        receiver.mode = "refusing"
        exporter.submit(_spans(4))
        await drops.wait_for("export_failed", 12)
        await exporter.shutdown(5)
    levels = [r.levelname for r in caplog.records if r.name == "switchyard.tracing"]
    assert levels == ["WARNING", "INFO", "WARNING"]
    assert "HTTP 503" in caplog.records[0].getMessage()


async def test_slow_receiver_keeps_the_queue_bounded(receiver: OtlpHttpReceiver, drops: Drops) -> None:
    """While one export hangs, at most one is in flight and the queue holds max_queue: the rest is dropped."""
    receiver.mode = "slow"
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(4))
    await receiver.wait_for_requests(1)
    for i in range(10):
        exporter.submit(_spans(8, start=100 + 8 * i, size=1024))
        assert exporter.queued <= 8
    assert exporter.queued == 8
    assert drops.counts == Counter(queue_full=72)
    assert receiver.requests == 1
    receiver.release()
    spans = await receiver.wait_for(12)
    assert [r.span.name for r in spans[4:]] == [f"span {i}" for i in range(100, 108)]
    await exporter.shutdown(5)
    assert drops.counts == Counter(queue_full=72)


async def test_export_timeout_frees_the_slot(receiver: OtlpHttpReceiver, drops: Drops) -> None:
    """A collector that never answers costs one timeout per batch, then the next batch goes."""
    receiver.mode = "slow"
    exporter = SpanExporter(_config(receiver.url, OTEL_EXPORTER_OTLP_TIMEOUT="100"), on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(4))
    await receiver.wait_for_requests(1)
    exporter.submit(_spans(4, start=4))
    await drops.wait_for("export_failed", 4)
    await receiver.wait_for_requests(2)
    await drops.wait_for("export_failed", 8)
    await exporter.shutdown(5)
    assert drops.counts == Counter(export_failed=8)


async def test_shutdown_flushes_what_is_queued(receiver: OtlpHttpReceiver, drops: Drops) -> None:
    """Spans short of a batch (the delay far off) are exported by shutdown, before it returns."""
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(3))
    await exporter.shutdown(5)
    assert [r.span.name for r in receiver.spans] == ["span 0", "span 1", "span 2"]
    exporter.submit(_spans(2))
    assert drops.counts == Counter(shutdown=2)


async def test_shutdown_of_an_exporter_never_started_still_flushes(receiver: OtlpHttpReceiver) -> None:
    """Spans submitted before start() are not lost by a shutdown."""
    exporter = SpanExporter(_config(receiver.url))
    exporter.submit(_spans(2))
    await exporter.shutdown(5)
    assert len(receiver.spans) == 2


async def test_shutdown_gives_up_at_its_timeout(receiver: OtlpHttpReceiver, drops: Drops) -> None:
    """A hanging export does not hold shutdown past its timeout; in-flight and queued spans are counted."""
    receiver.mode = "slow"
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    exporter.submit(_spans(4))
    await receiver.wait_for_requests(1)
    exporter.submit(_spans(2, start=4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await exporter.shutdown(0.2)
    assert loop.time() - started < 1.0
    assert drops.counts == Counter(shutdown=6)


async def test_a_failed_export_rests_the_exporter(
    receiver: OtlpHttpReceiver, drops: Drops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed export the exporter is not accepting for FAILURE_REST (callers then make no
    spans: `discard` counts them as failed), and accepts again once it has passed."""
    await receiver.stop()
    exporter = SpanExporter(_config(receiver.url), on_dropped=drops)
    await exporter.start()
    assert exporter.accepting
    exporter.submit(_spans(4))
    await drops.wait_for("export_failed", 4)
    assert not exporter.accepting
    exporter.discard(7)
    assert drops.counts == Counter(export_failed=11)
    monkeypatch.setattr(tracing, "FAILURE_REST", 0.0)
    exporter.submit(_spans(4))  # still tried when submitted: the rest only spares the encoding
    await drops.wait_for("export_failed", 15)
    assert exporter.accepting
    await exporter.shutdown(1.0)
    assert not exporter.accepting
