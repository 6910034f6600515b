"""End to end: signed webhooks through the gateway become OTLP spans at a real receiver, cost is
booked per tenant and day, budgets refuse past the cap, and the cost report reads the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import app as app_module
from gateway.app import create_app
from gateway.keys import SERVICES
from gateway.limits.budget import Spend, utc_day
from gateway.policy import watch
from gateway.settings import Settings
from gateway.telemetry import accesslog
from tests.integration.conftest import GatewayServer
from tests.support.clock import FakeClock
from tests.support.gateway import POLICIES, PUBLIC, Client, post
from tests.support.otlp import OtlpGrpcReceiver, OtlpHttpReceiver, Received
from tests.support.twilio import (
    ACME_NUMBER,
    ACME_TOKEN,
    BISTRO_TOKEN,
    CALLER,
    ENV,
    NORTHWIND_JWT,
    NORTHWIND_TOKEN,
    voice_params,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SHOP_TOKEN = "test-shop-auth-token-0000000000009"
SHOP_SID = "AC00000000000000000000000000000009"
SHOP_NUMBER = "+15559870001"
ADMIN = "test-admin-token-with-some-length-0001"
# A tenant whose cap fits exactly five webhooks a day.
SHOP = f"""
twilio: {{account_sid: {SHOP_SID}, auth_token_env: SHOP_TWILIO_AUTH_TOKEN}}
numbers: ["{SHOP_NUMBER}"]
limits: {{webhooks: {{rate: 1000, per: second}}}}
prices: {{webhook: 0.01, sms_segment: 0.02}}
budget: {{daily_usd: 0.05}}
routes:
  - {{name: hello, match: {{kind: voice}}, say: {{text: "Hello."}}}}
  - {{name: reply, match: {{kind: sms}}, message: {{text: "Thanks!"}}}}
"""
BODY = "Where is my order 4471?"
# The wall clock the gateway books spend by: now, since Redis expires a day's keys by its own
# clock (a day long past would be gone as soon as written).
WALL = time.time()
DAY = utc_day(WALL)

MakeApp = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_app(aiohttp_client: Any, clock: FakeClock) -> MakeApp:
    """A gateway on given policies and extra environment (OTEL_*), with the test's clocks."""

    async def make(policies: Path = POLICIES, limiter_url: str = "memory://", **env: str) -> Client:
        settings = Settings(policies_dir=policies, public_urls=(PUBLIC,), reload_interval=0, limiter_url=limiter_url)
        environment = {**ENV, "SHOP_TWILIO_AUTH_TOKEN": SHOP_TOKEN, **env}
        app = create_app(settings, env=environment, clock=clock, wall=lambda: WALL)
        server = GatewayServer(app, host="127.0.0.1")
        await server.start_server(access_log_class=accesslog.JsonAccessLogger)
        client: Client = await aiohttp_client(server)
        return client

    return make


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpHttpReceiver]:
    received = OtlpHttpReceiver()
    await received.start()
    try:
        yield received
    finally:
        received.release()
        await received.stop()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    (tmp_path / "shop.yaml").write_text(SHOP)
    return tmp_path


def _tracing(endpoint: str, **more: str) -> dict[str, str]:
    # Batches leave at once: the test waits on the receiver, not on the exporter's 5 s default.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "1", **more}


async def _spans_of(received: list[Received], name: str) -> list[Received]:
    return [span for span in received if span.span.name == name]


async def test_a_webhook_is_one_server_span_under_the_callers_trace(
    make_app: MakeApp, receiver: OtlpHttpReceiver
) -> None:
    """A voice webhook with a traceparent gives one SERVER span in that trace, with the HTTP,
    tenant, route, decision, SID and cost attributes, and the instance in the resource."""
    client = await make_app(**_tracing(receiver.url))
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    status, _ = await post(client, "/twilio/voice", voice_params(), ACME_TOKEN, traceparent=traceparent)
    assert status == 200
    accesslog.flush()
    (span,) = await receiver.wait_for(1)
    assert span.span.name == "twilio.webhook voice"
    assert span.span.kind == 2  # SERVER
    assert span.span.trace_id.hex() == TRACE_ID
    assert span.span.parent_span_id.hex() == PARENT_ID
    assert span.span.end_time_unix_nano >= span.span.start_time_unix_nano
    attributes = span.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/twilio/voice"
    assert attributes["http.response.status_code"] == 200
    assert attributes["switchyard.tenant.id"] == "acme-health"
    assert attributes["switchyard.route"] == "agent"
    assert attributes["switchyard.action"] == "stream"
    assert attributes["switchyard.decision"] == "answered"
    assert attributes["twilio.call_sid"] == "CA" + "a" * 32
    assert attributes["switchyard.cost.usd"] == pytest.approx(0.0001)
    assert attributes["switchyard.cost.webhook_usd"] == pytest.approx(0.0001)
    assert isinstance(attributes["switchyard.limit.remaining"], int)
    assert span.resource["service.name"] == "switchyard"
    assert span.resource["service.instance.id"]


async def test_no_number_body_or_secret_is_exported(make_app: MakeApp, receiver: OtlpHttpReceiver) -> None:
    """Calls, texts, status callbacks and a forged request: no phone number, message body, auth
    token or signature appears in any exported attribute or resource value."""
    client = await make_app(**_tracing(receiver.url))
    await post(client, "/twilio/voice", voice_params(), ACME_TOKEN)
    sms = {"AccountSid": "AC00000000000000000000000000000002", "From": CALLER, "To": "+15552340001"}
    await post(client, "/twilio/sms", {**sms, "Body": BODY, "MessageSid": "SM" + "b" * 32}, BISTRO_TOKEN)
    status = voice_params(CallStatus="completed", CallDuration="61")
    await post(client, "/t/acme-health/status", status, ACME_TOKEN)
    forged = await client.post("/twilio/voice", data=voice_params(), headers={"X-Twilio-Signature": "forged"})
    assert forged.status == 403
    # A number in the path of a request nobody signed.
    unknown = await client.post("/t/%2B15551230001/voice", data=voice_params(), headers={"X-Twilio-Signature": "x"})
    assert unknown.status == 200
    accesslog.flush()
    spans = await receiver.wait_for(5)
    secrets = [CALLER, CALLER[2:], ACME_NUMBER, ACME_NUMBER[2:], "4471", "order", ACME_TOKEN, BISTRO_TOKEN]
    for span in spans:
        values = [*span.attributes.values(), *span.resource.values(), span.span.name]
        for value in values:
            for secret in secrets:
                assert secret not in str(value), f"{secret!r} in {span.span.name}: {value!r}"
    assert {s.span.name for s in spans} == {"twilio.webhook voice", "twilio.webhook sms", "twilio.webhook status"}


async def test_a_completed_call_costs_its_started_minutes(make_app: MakeApp, receiver: OtlpHttpReceiver) -> None:
    """CallDuration 61 s on the completed status callback is 2 started minutes at the tenant's price."""
    client = await make_app(**_tracing(receiver.url))
    params = voice_params(CallStatus="completed", CallDuration="61")
    assert (await post(client, "/t/acme-health/status", params, ACME_TOKEN))[0] == 204
    accesslog.flush()
    (span,) = await receiver.wait_for(1)
    assert span.attributes["switchyard.cost.voice_usd"] == pytest.approx(2 * 0.0085)
    assert span.attributes["switchyard.cost.usd"] == pytest.approx(2 * 0.0085 + 0.0001)
    assert span.attributes["switchyard.decision"] == "recorded"


async def test_sms_segments_in_and_out_are_costed(make_app: MakeApp, receiver: OtlpHttpReceiver) -> None:
    """An inbound text of NumSegments=2 answered with a one-segment <Message>: 3 segments."""
    client = await make_app(**_tracing(receiver.url))
    sms = {"AccountSid": "AC00000000000000000000000000000001", "From": CALLER, "To": ACME_NUMBER}
    params = {**sms, "Body": "hours please", "NumSegments": "2", "MessageSid": "SM" + "c" * 32}
    status, text = await post(client, "/twilio/sms", params, ACME_TOKEN)
    assert status == 200 and "<Message>" in text
    accesslog.flush()
    (span,) = await receiver.wait_for(1)
    assert span.attributes["switchyard.cost.sms_usd"] == pytest.approx(3 * 0.0079)
    assert span.attributes["twilio.message_sid"] == "SM" + "c" * 32


async def test_grpc_export(make_app: MakeApp) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc exports the same span to a real gRPC receiver."""
    grpc_receiver = OtlpGrpcReceiver()
    await grpc_receiver.start()
    try:
        env = _tracing(f"http://{grpc_receiver.target}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
        client = await make_app(**env)
        assert (await post(client, "/twilio/voice", voice_params(), ACME_TOKEN))[0] == 200
        accesslog.flush()
        (span,) = await grpc_receiver.wait_for(1)
        assert span.span.name == "twilio.webhook voice"
        assert span.attributes["switchyard.tenant.id"] == "acme-health"
    finally:
        await grpc_receiver.stop()


async def test_a_slow_collector_does_not_hold_answers(make_app: MakeApp, receiver: OtlpHttpReceiver) -> None:
    """With the collector holding every export, 50 webhooks are all answered."""
    receiver.mode = "slow"
    client = await make_app(**_tracing(receiver.url))
    results = await asyncio.gather(*(post(client, "/twilio/voice", voice_params(), ACME_TOKEN) for _ in range(50)))
    assert [status for status, _ in results] == [200] * 50
    receiver.release()


async def test_a_collector_that_is_down_costs_nothing_but_dropped_spans(
    make_app: MakeApp, unused_tcp_port: int
) -> None:
    """Nothing listens at the endpoint: every webhook is answered, and the spans are counted as
    dropped by the time the gateway has shut down."""
    client = await make_app(**_tracing(f"http://127.0.0.1:{unused_tcp_port}"))
    metrics = client.app[SERVICES].metrics
    for _ in range(20):
        assert (await post(client, "/twilio/voice", voice_params(), ACME_TOKEN))[0] == 200
    await client.close()  # flushes and shuts the exporter down
    assert _sample(metrics.render().decode(), "switchyard_spans_dropped_total") == 20


async def test_spend_past_the_daily_budget_is_refused(make_app: MakeApp, shop: Path) -> None:
    """Five webhooks at $0.01 fill a $0.05 day; the sixth call gets <Reject reason="busy"/>, a text
    the empty <Response/>, and the refusals cost nothing."""
    client = await make_app(shop)
    call = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER, "CallSid": "CA" + "d" * 32}
    answers = [await post(client, "/twilio/voice", call, SHOP_TOKEN) for _ in range(6)]
    assert ["<Say>" in text for _, text in answers] == [True] * 5 + [False]
    assert '<Reject reason="busy"' in answers[5][1]
    text = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER, "Body": "hi", "NumSegments": "1"}
    status, body = await post(client, "/twilio/sms", text, SHOP_TOKEN)
    assert status == 200 and "<Message>" not in body
    spend = await _spend(client, "shop")
    # The refused text's inbound segment is billed by Twilio all the same: booked, past the cap.
    assert spend.parts == {"webhook": 50_000, "sms": 20_000} and spend.reserved == 0


@pytest.mark.parametrize(
    "store", [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
)
async def test_concurrent_webhooks_never_overshoot_the_cap(
    make_app: MakeApp, shop: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """100 webhooks at once against a cap of five: exactly five are answered, and once every
    record is booked the day's spend is the cap, on the in-process and the Redis ledger."""
    limiter = "memory://" if store == "memory" else request.getfixturevalue("redis_url")
    client = await make_app(shop, limiter_url=limiter)
    call = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER}
    results = await asyncio.gather(*(post(client, "/twilio/voice", call, SHOP_TOKEN) for _ in range(100)))
    assert sum("<Say>" in text for _, text in results) == 5
    spend = await _spend(client, "shop")
    assert spend.total == 50_000 and spend.reserved == 0


async def test_calls_hold_their_estimate_until_their_final_status(make_app: MakeApp, tmp_path: Path) -> None:
    """Priced per minute with a cap of two calls' estimates: of five concurrent calls two are
    answered; their completed callbacks drop the holds and book the real minutes, and a new call
    fits again; a busy call's hold is dropped with nothing booked."""
    (tmp_path / "shop.yaml").write_text(
        SHOP.replace("prices: {webhook: 0.01, sms_segment: 0.02}", "prices: {voice_minute: 0.01}").replace(
            "budget: {daily_usd: 0.05}", "budget: {daily_usd: 0.1, call_reserve_minutes: 5}"
        )
    )
    client = await make_app(tmp_path)

    def call(n: int, **extra: str) -> dict[str, str]:
        return {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER, "CallSid": f"CA{n:032x}", **extra}

    answers = await asyncio.gather(*(post(client, "/twilio/voice", call(n), SHOP_TOKEN) for n in range(5)))
    assert sum("<Say>" in text for _, text in answers) == 2
    assert (await _spend(client, "shop")).reserved == 100_000
    admitted = [n for n, (_, text) in enumerate(answers) if "<Say>" in text]
    done = call(admitted[0], CallStatus="completed", CallDuration="61")
    assert (await post(client, "/t/shop/status", done, SHOP_TOKEN))[0] == 204
    busy = call(admitted[1], CallStatus="busy")
    assert (await post(client, "/t/shop/status", busy, SHOP_TOKEN))[0] == 204
    spend = await _spend(client, "shop")
    assert (spend.parts, spend.reserved) == ({"voice": 20_000}, 0)
    assert "<Say>" in (await post(client, "/twilio/voice", call(9), SHOP_TOKEN))[1]


async def test_a_twilio_retry_is_charged_once(make_app: MakeApp, shop: Path) -> None:
    """The same signed webhook with the same I-Twilio-Idempotency-Token twice: answered twice,
    booked once (against the budget and in the ledger)."""
    client = await make_app(shop)
    call = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER}
    retry = {"I-Twilio-Idempotency-Token": "tok-1"}
    for _ in range(2):
        assert "<Say>" in (await post(client, "/twilio/voice", call, SHOP_TOKEN, **retry))[1]
    assert (await _spend(client, "shop")).parts == {"webhook": 10_000}


async def test_a_replayed_completed_callback_books_its_minutes_once(make_app: MakeApp) -> None:
    """The same signed `completed` status callback three times (a replay needs no new
    signature): the call's minutes are booked once."""
    client = await make_app()
    params = voice_params(CallStatus="completed", CallDuration="61")
    for _ in range(3):
        assert (await post(client, "/t/acme-health/status", params, ACME_TOKEN))[0] == 204
    assert (await _spend(client, "acme-health")).parts == {"webhook": 100, "voice": 17_000}


async def test_cost_report_for_the_tenant_and_the_operator(make_app: MakeApp) -> None:
    """The tenant's JWT reads its own day in parts; the admin token reads every tenant; neither
    reads without its credential."""
    client = await make_app(SWITCHYARD_ADMIN_TOKEN=ADMIN)
    call = voice_params()
    await post(client, "/twilio/voice", call, ACME_TOKEN)
    await post(client, "/t/acme-health/status", voice_params(CallStatus="completed", CallDuration="30"), ACME_TOKEN)
    await post(client, "/t/northwind/voice", {**call, "To": "+15553450001"}, NORTHWIND_TOKEN)
    await _spend(client, "acme-health")  # every record booked
    claims = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 300}
    auth = {"Authorization": "Bearer " + jwt.encode(claims, NORTHWIND_JWT, algorithm="HS256")}
    own = await client.get(f"/api/v1/cost?day={DAY}", headers=auth)
    assert own.status == 200
    report = await own.json()
    assert report["tenant"] == "northwind" and report["day"] == DAY and report["budget"] is None
    admin = await client.get(f"/api/v1/admin/cost?day={DAY}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status == 200
    tenants = {t["tenant"]: t for t in (await admin.json())["tenants"]}
    acme = tenants["acme-health"]
    assert acme["parts_usd"]["webhook"] == pytest.approx(0.0002)
    assert acme["parts_usd"]["voice"] == pytest.approx(0.0085)
    assert acme["budget"]["daily_usd"] == 200 and acme["budget"]["exhausted"] is False
    assert (await client.get("/api/v1/admin/cost", headers=auth)).status == 401
    assert (await client.get("/api/v1/admin/cost")).status == 401
    bad_day = await client.get("/api/v1/cost?day=2026-13-01", headers=auth)
    assert bad_day.status == 400 and bad_day.content_type == "application/problem+json"


async def test_metrics_count_requests_by_tenant_and_decision(make_app: MakeApp) -> None:
    """/metrics counts each webhook under its tenant, kind, decision and status; forged requests
    under their tenant with decision forged."""
    client = await make_app()
    await post(client, "/twilio/voice", voice_params(), ACME_TOKEN)
    await client.post("/twilio/voice", data=voice_params(), headers={"X-Twilio-Signature": "forged"})
    accesslog.flush()
    text = await (await client.get("/metrics")).text()
    answered = {"tenant": "acme-health", "kind": "voice", "decision": "answered", "status": "200"}
    assert _sample(text, "switchyard_requests_total", **answered) == 1
    forged = {**answered, "decision": "forged", "status": "403"}
    assert _sample(text, "switchyard_requests_total", **forged) == 1


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def _spend(client: Client, tenant: str) -> Spend:
    """The tenant's spend of DAY once every ended request is booked: the batch handed over, and
    the ledger writes it began (tasks of the recorder) done."""
    accesslog.flush()
    services = client.app[SERVICES]
    await services.recorder.settled()
    return await services.ledger.spend(tenant, DAY)


async def test_the_cost_report_is_charged_to_the_api_bucket(make_app: MakeApp) -> None:
    """Each report reads the ledger: the tenant's `api` bucket (northwind: burst 10) bounds them."""
    client = await make_app()
    claims = {"tenant": "northwind", "aud": "switchyard", "exp": int(time.time()) + 300}
    auth = {"Authorization": "Bearer " + jwt.encode(claims, NORTHWIND_JWT, algorithm="HS256")}
    statuses = [(await client.get("/api/v1/cost", headers=auth)).status for _ in range(11)]
    assert statuses == [200] * 10 + [429]


async def _one_gauge_cycle(client: Client) -> None:
    """Run the budget gauges' loop (app._budget_gauges) until its first cycle is done, then stop it."""
    task = asyncio.create_task(app_module._budget_gauges(client.app[SERVICES]))
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    "store", [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
)
async def test_the_budget_gauge_shows_what_is_left_of_a_spending_tenant(
    make_app: MakeApp, shop: Path, store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two $0.01 webhooks leave $0.03 of shop's $0.05; a shared ledger's gauge comes from its own
    replies (spend is never read), and a tenant that spent nothing gets no gauge at all."""
    url = "memory://" if store == "memory" else request.getfixturevalue("redis_url")
    client = await make_app(shop, limiter_url=url)
    call = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER, "CallSid": "CA" + "e" * 32}
    for _ in range(2):
        assert "<Say>" in (await post(client, "/twilio/voice", call, SHOP_TOKEN))[1]
    await _spend(client, "shop")
    services = client.app[SERVICES]
    if store == "redis":

        async def no_reads(tenant: str, day: str) -> Spend:
            raise AssertionError("the gauge read the shared ledger")

        monkeypatch.setattr(services.ledger, "spend", no_reads)
    await _one_gauge_cycle(client)
    text = await (await client.get("/metrics")).text()
    assert _sample(text, "switchyard_budget_remaining_usd", tenant="shop") == pytest.approx(0.03)
    assert 'switchyard_budget_remaining_usd{tenant="' + 'shop"}' in text and text.count("budget_remaining_usd{") == 1


async def test_a_removed_tenant_leaves_metrics(make_app: MakeApp, shop: Path) -> None:
    """Once a tenant's file is removed and the policies reload, /metrics has no series of it left."""
    (shop / "acme-health.yaml").write_text((POLICIES / "acme-health.yaml").read_text())
    client = await make_app(shop)
    await post(client, "/twilio/voice", voice_params(), ACME_TOKEN)
    call = {"AccountSid": SHOP_SID, "From": CALLER, "To": SHOP_NUMBER, "CallSid": "CA" + "f" * 32}
    await post(client, "/twilio/voice", call, SHOP_TOKEN)
    accesslog.flush()
    text = await (await client.get("/metrics")).text()
    assert 'tenant="acme-health"' in text and 'tenant="shop"' in text
    (shop / "acme-health.yaml").unlink()
    assert await watch.reload_soon(client.app[SERVICES].registry, "files changed") is True
    text = await (await client.get("/metrics")).text()
    assert 'tenant="acme-health"' not in text and 'tenant="shop"' in text
