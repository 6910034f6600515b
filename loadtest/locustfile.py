"""Exploratory load on a running gateway: signed voice and SMS webhooks for every demo tenant.

Needs locust (`pip install -e .[load]`). Start the gateway with a --public-url equal to the
--host given here (the URL Twilio would have signed), then:

    python3 dev.py serve                                 # demo policies, http://127.0.0.1:8080
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 20 -r 5 -t 60s

Tenants, numbers and tokens come from the policy directory ($SWITCHYARD_POLICIES, else
policies/) and the demo tokens of policies/demo.env (variables already set win). The gateway's
own loader reads the policies, so a voice refusal is recognised exactly (the tenant's refusal
TwiML) and reported on a REFUSED row of its own, not as a failure; an SMS answered with an empty
<Response/> (refused, or no route) goes on an EMPTY row. The demo limits are low (bistro: 5
webhooks a second), so refusals are expected; a 403 or a 5xx is a failure.

For numbers to compare across commits use bench.py, not this: Locust's Python client saturates
long before a one-process gateway does on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlencode

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

from gateway.policy.loader import LoadContext, load_dir

POLICIES = Path(os.environ.get("SWITCHYARD_POLICIES", scenario.ROOT / "policies"))
SMS_BODIES = ("hours", "menu", "hello", "Are you open today?", "BOOK a table for 2")
CALLERS = ("+15557654321", "+15551112222", "+19005550100")  # the last one is on bistro's blocklist


@dataclass(frozen=True, slots=True)
class Line:
    tenant: str
    number: str
    account_sid: str
    token: str
    refusal_voice: bytes
    refusal_sms: bytes


def load_lines(host: str) -> list[Line]:
    env = {**scenario.demo_env(), **os.environ}
    tenants = load_dir(POLICIES, LoadContext(env=env, public_url=host))
    return [
        Line(t.id, number, t.account_sid, t.keys[0].decode(), t.refusal["voice"], t.refusal["sms"])
        for t in tenants.values()
        for number in sorted(t.numbers)
    ]


class TwilioWebhooks(HttpUser):
    """One Twilio account's worth of callers and texters, hitting every demo number."""

    wait_time = between(0.05, 0.5)
    lines: ClassVar[list[Line]] = []

    def on_start(self) -> None:
        if not self.host:
            raise ValueError("give the gateway's URL with --host (the same as its --public-url)")
        self.base = self.host.rstrip("/")
        if not TwilioWebhooks.lines:
            TwilioWebhooks.lines = load_lines(self.base)
        self.rng = random.Random()

    def _post(self, kind: str, line: Line, params: dict[str, str]) -> None:
        path = scenario.VOICE_PATH if kind == "voice" else scenario.SMS_PATH
        url = self.base + path
        headers = {
            **scenario.twilio_headers(scenario.sign(line.token, url, params)),
            "I-Twilio-Idempotency-Token": scenario.idempotency_token(),
        }
        name = f"{kind} {line.tenant}"
        with self.client.post(path, data=urlencode(params), headers=headers, name=name, catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {answer.text[:120]}")
                return
            body = answer.content or b""
            if not body.startswith(b"<?xml"):
                answer.failure(f"not TwiML: {body[:120]!r}")
                return
            answer.success()
            # A refusal is a correct answer: count it on a row of its own, so its rate shows. An
            # SMS refusal is an empty <Response/>, which is also what an SMS without a route gets.
            if kind == "voice" and body == line.refusal_voice:
                self._note("REFUSED", name, body)
            elif kind == "sms" and body == line.refusal_sms:
                self._note("EMPTY", name, body)

    def _note(self, request_type: str, name: str, body: bytes) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=0, response_length=len(body), exception=None, context={}
        )

    @task(3)
    def inbound_call(self) -> None:
        line = self.rng.choice(self.lines)
        params = scenario.voice_params(self.rng, to=line.number, account_sid=line.account_sid)
        caller = self.rng.choice(CALLERS)
        params.update(From=caller, Caller=caller)
        self._post("voice", line, params)

    @task(2)
    def inbound_sms(self) -> None:
        line = self.rng.choice(self.lines)
        self._post(
            "sms", line, scenario.sms_params(self.rng, line.number, line.account_sid, self.rng.choice(SMS_BODIES))
        )
