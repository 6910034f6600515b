"""Signed Twilio webhooks through a real gateway on 127.0.0.1, with the example policies."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from gateway.keys import SERVICES
from gateway.telemetry import accesslog
from tests.support.clock import FakeClock
from tests.support.gateway import POLICIES, PUBLIC, Client, MakeClient, post
from tests.support.twilio import (
    ACME_AFTER_HOURS,
    ACME_NUMBER,
    ACME_OLD_TOKEN,
    ACME_TOKEN,
    BISTRO_NUMBER,
    BISTRO_TOKEN,
    CALLER,
    signed_form,
    signed_json,
    sms_params,
    voice_params,
)

SAY = ["Say", "Hangup"]


def verbs(text: str) -> list[str]:
    return [child.tag for child in ET.fromstring(text)]


async def test_voice_call_is_handed_to_the_stream(gateway: Client) -> None:
    """A signed call to acme's main number gets <Connect><Stream> to the gateway's own endpoint,
    with tenant and agent parameters and an admission token; the fallback follows </Connect>."""
    status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    assert status == 200
    stream = ET.fromstring(text).find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "ws://gw.test/t/acme-health/stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert (params.pop("switchyard_admission", "") or "").startswith("v2.")
    assert params == {"tenant": "acme-health", "agent": "triage"}
    assert verbs(text) == ["Connect", "Say"]


async def test_route_by_called_number(gateway: Client) -> None:
    """The after-hours number of the same tenant gets its own <Say>, not the stream."""
    status, text = await post(gateway, "/twilio/voice", voice_params(to=ACME_AFTER_HOURS), ACME_TOKEN)
    assert status == 200
    assert verbs(text) == ["Say", "Hangup"]


@pytest.mark.parametrize(
    ("token", "signature"),
    [("wrong-token", None), (ACME_TOKEN, ""), (ACME_TOKEN, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")],
    ids=["wrong-token", "missing", "garbage"],
)
async def test_forged_call_is_refused_with_403(gateway: Client, token: str, signature: str | None) -> None:
    """A request whose signature does not verify with the tenant's token gets 403."""
    head, body = signed_form(token, PUBLIC + "/twilio/voice", voice_params())
    if signature is not None:
        head["X-Twilio-Signature"] = signature
    response = await gateway.post("/twilio/voice", data=body, headers=head)
    assert response.status == 403


async def test_tampered_parameter_is_refused(gateway: Client) -> None:
    """Changing one signed field after signing breaks the signature."""
    head, body = signed_form(ACME_TOKEN, PUBLIC + "/twilio/voice", voice_params())
    response = await gateway.post("/twilio/voice", data=body.replace(b"ringing", b"ringinG"), headers=head)
    assert response.status == 403


async def test_previous_token_is_accepted_during_rotation(gateway: Client) -> None:
    """A request signed with acme's previous auth token still verifies."""
    status, _ = await post(gateway, "/twilio/voice", voice_params(), ACME_OLD_TOKEN)
    assert status == 200


async def test_forged_requests_spend_no_quota(gateway: Client) -> None:
    """Forged requests beyond the burst are refused with 403 and leave the whole burst for real ones."""
    params = voice_params(to=BISTRO_NUMBER)
    for _ in range(25):
        status, _ = await post(gateway, "/twilio/voice", params, "forged-token")
        assert status == 403
    answers = [verbs((await post(gateway, "/twilio/voice", params, BISTRO_TOKEN))[1]) for _ in range(10)]
    assert answers == [SAY] * 10


async def test_unknown_number_is_told_it_is_not_configured(gateway: Client) -> None:
    """A call to a number no tenant owns gets the not-configured <Say>, with 200."""
    params = voice_params(to="+15550000000", AccountSid="AC" + "f" * 32)
    status, text = await post(gateway, "/twilio/voice", params, ACME_TOKEN)
    assert status == 200
    root = ET.fromstring(text)
    assert root.findtext("Say") == "This number is not configured."


async def test_tenant_by_path(gateway: Client) -> None:
    """Under /t/{tenant}/ the path names the tenant and the signed URL includes that path."""
    params = voice_params(to="+15550000000", AccountSid="AC" + "f" * 32)
    status, text = await post(gateway, "/t/bistro/voice", params, BISTRO_TOKEN)
    assert status == 200 and verbs(text) == SAY
    status, _ = await post(gateway, "/t/bistro/voice", params, ACME_TOKEN)
    assert status == 403


async def test_tenant_by_account_sid(gateway: Client) -> None:
    """A number nobody owns falls back to the tenant that owns the AccountSid."""
    params = voice_params(to="+15550000000", AccountSid="AC00000000000000000000000000000002")
    status, text = await post(gateway, "/twilio/voice", params, BISTRO_TOKEN)
    assert status == 200 and verbs(text) == SAY


async def test_status_callback_of_outbound_call_finds_tenant_by_from(gateway: Client) -> None:
    """On calls we placed (Direction outbound-api) our number is From; the callback gets 204."""
    params = voice_params(to=CALLER, caller=BISTRO_NUMBER, Direction="outbound-api", CallStatus="completed")
    params["AccountSid"] = "AC" + "e" * 32
    status, _ = await post(gateway, "/twilio/status", params, BISTRO_TOKEN)
    assert status == 204


async def test_voice_over_limit_gets_default_reject(gateway: Client, clock: FakeClock) -> None:
    """bistro's burst of 10 is admitted, the 11th call gets <Reject reason="busy"/>, and refill admits one more."""
    params = voice_params(to=BISTRO_NUMBER)
    answers = [(await post(gateway, "/twilio/voice", params, BISTRO_TOKEN))[1] for _ in range(11)]
    assert [verbs(a) for a in answers[:10]] == [SAY] * 10
    refused = ET.fromstring(answers[10])
    assert [c.tag for c in refused] == ["Reject"] and refused[0].get("reason") == "busy"
    clock.advance(0.2)  # 5 per second: one token back
    assert verbs((await post(gateway, "/twilio/voice", params, BISTRO_TOKEN))[1]) == SAY
    assert verbs((await post(gateway, "/twilio/voice", params, BISTRO_TOKEN))[1]) == ["Reject"]


async def test_voice_over_limit_gets_tenant_refusal(gateway: Client) -> None:
    """acme's voice bucket (burst 20) refuses the 21st call with acme's own refusal TwiML."""
    params = voice_params()
    answers = [(await post(gateway, "/twilio/voice", params, ACME_TOKEN))[1] for _ in range(21)]
    assert all(verbs(a) == ["Connect", "Say"] for a in answers[:20])
    assert verbs(answers[20]) == ["Say", "Hangup"]
    assert "All our lines are busy" in answers[20]


async def test_sms_over_limit_gets_empty_response(gateway: Client) -> None:
    """bistro's sms bucket (burst 5) answers the 6th SMS with an empty <Response/>: no reply is sent."""
    params = sms_params(body="menu please")
    answers = [(await post(gateway, "/twilio/sms", params, BISTRO_TOKEN)) for _ in range(6)]
    assert all(status == 200 for status, _ in answers)
    assert [verbs(text) for _, text in answers[:5]] == [["Message"]] * 5
    assert verbs(answers[5][1]) == []


async def test_sms_routes_by_body(gateway: Client) -> None:
    """The first sms route whose body pattern matches answers; others fall through."""
    _, menu = await post(gateway, "/twilio/sms", sms_params(body="MENU?"), BISTRO_TOKEN)
    _, other = await post(gateway, "/twilio/sms", sms_params(body="hi"), BISTRO_TOKEN)
    assert "risotto" in menu
    assert "text you back" in other


async def test_blocked_caller_is_rejected(gateway: Client) -> None:
    """A caller matching bistro's `from` pattern gets <Reject reason="rejected"/>."""
    _, text = await post(gateway, "/twilio/voice", voice_params(to=BISTRO_NUMBER, caller="+19005550100"), BISTRO_TOKEN)
    root = ET.fromstring(text)
    assert root[0].tag == "Reject" and root[0].get("reason") == "rejected"


async def test_status_callbacks_are_never_charged(gateway: Client) -> None:
    """Thirty status callbacks leave bistro's whole burst of 10 for calls."""
    params = voice_params(to=BISTRO_NUMBER, CallStatus="completed")
    for _ in range(30):
        status, _ = await post(gateway, "/twilio/status", params, BISTRO_TOKEN)
        assert status == 204
    answers = [verbs((await post(gateway, "/twilio/voice", params, BISTRO_TOKEN))[1]) for _ in range(10)]
    assert answers == [SAY] * 10


async def test_twilio_retry_is_not_charged_twice(gateway: Client) -> None:
    """Retries carrying the same I-Twilio-Idempotency-Token are answered without spending quota."""
    params = voice_params(to=BISTRO_NUMBER)
    for _ in range(6):
        _, text = await post(
            gateway, "/twilio/voice", params, BISTRO_TOKEN, **{"I-Twilio-Idempotency-Token": "retry-1"}
        )
        assert verbs(text) == SAY
    fresh = [
        verbs(
            (await post(gateway, "/twilio/voice", params, BISTRO_TOKEN, **{"I-Twilio-Idempotency-Token": f"t{i}"}))[1]
        )
        for i in range(10)
    ]
    assert fresh == [SAY] * 9 + [["Reject"]]


async def test_json_webhook_with_body_hash(gateway: Client) -> None:
    """A JSON body is checked against bodySHA256 and the URL signature; a changed body is refused."""
    body = orjson.dumps({"AccountSid": ACME_SID_JSON, "To": ACME_NUMBER, "From": CALLER, "CallStatus": "completed"})
    url, head = signed_json(ACME_TOKEN, PUBLIC + "/twilio/status", body)
    path = url[len(PUBLIC) :]
    assert (await gateway.post(path, data=body, headers=head)).status == 204
    tampered = body.replace(b"completed", b"failed")
    assert (await gateway.post(path, data=tampered, headers=head)).status == 403


ACME_SID_JSON = "AC00000000000000000000000000000001"


@pytest.fixture
def bistro_only(tmp_path: Path) -> Path:
    """Bistro's policy alone: it has no stream route, so it needs no public URL."""
    (tmp_path / "bistro.yaml").write_text((POLICIES / "bistro.yaml").read_text())
    return tmp_path


async def test_forwarded_headers_from_trusted_proxy(make_gateway: MakeClient, bistro_only: Path) -> None:
    """Without a public URL, X-Forwarded-Proto/Host rebuild the signed URL, but only from a trusted peer."""
    trusted = await make_gateway(policies_dir=bistro_only, public_urls=(), trusted_proxies=("127.0.0.0/8",))
    head, body = signed_form(BISTRO_TOKEN, "https://gw.example.com/twilio/voice", voice_params(to=BISTRO_NUMBER))
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    assert (await trusted.post("/twilio/voice", data=body, headers={**head, **forwarded})).status == 200


async def test_forwarded_headers_from_untrusted_peer_are_ignored(make_gateway: MakeClient, bistro_only: Path) -> None:
    """The same forwarded headers from a peer that is not a trusted proxy do not change the URL: 403."""
    untrusted = await make_gateway(policies_dir=bistro_only, public_urls=())
    head, body = signed_form(BISTRO_TOKEN, "https://gw.example.com/twilio/voice", voice_params(to=BISTRO_NUMBER))
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    assert (await untrusted.post("/twilio/voice", data=body, headers={**head, **forwarded})).status == 403


async def test_internal_failure_answers_fallback_twiml_not_5xx(gateway: Client) -> None:
    """If the limit step blows up, Twilio still gets the tenant's fallback TwiML with 200."""

    class Broken:
        degraded = False

        def acquire_now(self, *args: object) -> None:
            return None  # as a shared store would: the caller must await acquire()

        async def acquire(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

    gateway.app[SERVICES].limits = Broken()  # type: ignore[assignment]
    status, text = await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    assert status == 200
    assert "call back in a few minutes" in text


async def test_access_log_line_is_json_with_masked_numbers(gateway: Client, capfd: pytest.CaptureFixture[str]) -> None:
    """Each request writes one JSON line: tenant, route, decision, status; numbers masked, no token."""
    accesslog.flush()
    capfd.readouterr()  # lines of earlier tests still buffered
    await post(gateway, "/twilio/voice", voice_params(), ACME_TOKEN)
    # aiohttp logs after sending; the next request on the same connection starts only after that.
    await gateway.get("/healthz")
    accesslog.flush()  # lines are buffered per loop tick
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    record = next(r for r in lines if r.get("path") == "/twilio/voice")
    assert record["tenant"] == "acme-health"
    assert record["route"] == "agent"
    assert record["decision"] == "answered"
    assert record["status"] == 200
    assert record["caller"] == "+1******4321"
    assert record["called"] == "+1******0001"
    text = orjson.dumps(lines).decode()
    assert CALLER not in text and ACME_TOKEN not in text


async def test_health_and_readiness(gateway: Client) -> None:
    """/healthz answers ok; /readyz reports the tenants loaded and the limit store's state."""
    assert (await (await gateway.get("/healthz")).json()) == {"status": "ok"}
    ready = await (await gateway.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["tenants"] == 3
    assert ready["limits"] == {"store": "memory", "degraded": False}
