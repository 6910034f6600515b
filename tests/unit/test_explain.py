"""`switchyard explain`: the route, action, deadline, buckets, budget and the request an upstream
route would send, with its signature masked; nothing is called."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from gateway import cli
from tests.support.twilio import ACME_TOKEN, ENV

POLICY = """
twilio:
  account_sid: AC00000000000000000000000000000001
  auth_token_env: ACME_TWILIO_AUTH_TOKEN
  webhook_timeout_ms: 3000
numbers: ["+15551230001"]
limits: {webhooks: {rate: 5, per: second}}
budget: {daily_usd: 10}
prices: {voice_minute: 0.01}
routes:
  - {name: runtime, match: {kind: voice}, upstream: {url: "https://runtime.example/twilio/voice", timeout_ms: 5000}}
  - {name: hello, match: {kind: sms}, message: {text: "Hi!"}}
"""


def _explain(tmp_path: Path, capsys: pytest.CaptureFixture[str], *pairs: str) -> dict[str, object]:
    (tmp_path / "shop.yaml").write_text(POLICY)
    code = cli.explain("shop", pairs, tmp_path, ENV, "https://gw.example.com")
    assert code == 0
    report: dict[str, object] = json.loads(capsys.readouterr().out)
    return report


def test_an_upstream_route_shows_the_signed_request_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The voice route: its deadline (the tenant's 3 s less the margin, under the route's 5 s), the
    bucket, the budget, and the forwarded request whose signature is shown only in part."""
    report = _explain(tmp_path, capsys, "kind=voice", "From=+15557654321", "CallSid=CA01")
    assert (report["route"], report["action"], report["deadline_ms"]) == ("runtime", "upstream", 2500)
    assert report["buckets"] == [{"name": "webhooks", "rate": 5.0, "per_seconds": 1.0, "burst": 5}]
    assert report["budget"] == {
        "daily_usd": 10.0,
        "call_reserve_usd": 0.05,
        "today": "not read (give --limiter to read the shared ledger)",
    }
    request = report["request"]
    assert isinstance(request, dict)
    assert request["url"] == "https://runtime.example/twilio/voice"
    masked = request["headers"]["X-Twilio-Signature"]
    assert masked.endswith("…") and len(masked) == 5
    # What would be sent is exactly what twilio's validator accepts, once the signature is whole.
    params = dict(pair.split("=", 1) for pair in ("From=+15557654321", "CallSid=CA01"))
    params |= {"AccountSid": "AC00000000000000000000000000000001", "To": "+15551230001"}
    full = RequestValidator(ACME_TOKEN).compute_signature(request["url"], params)
    assert full.startswith(masked[:4])


def test_a_static_route_shows_its_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An SMS route answers bytes rendered at load: explain prints them; no request."""
    report = _explain(tmp_path, capsys, "kind=sms", "Body=hello")
    assert (report["route"], report["action"]) == ("hello", "message")
    assert "<Message>Hi!</Message>" in str(report["answer"]) and "request" not in report
