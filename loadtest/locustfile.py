"""Exploratory load on a running gateway: signed voice and SMS webhooks for every demo tenant
(TwilioWebhooks), calls streamed over Media Streams (MediaStreamCaller), and the outbound API's
calls, texts and after-hours races with JWTs (OutboundApiClient; see its docstring).

Needs locust and websocket-client (`pip install -e .[load]`). Start the gateway with a
--public-url equal to the --host given here (the URL Twilio would have signed), then:

    python3 dev.py serve                                 # demo policies, http://127.0.0.1:8080
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 20 -r 5 -t 60s                     # every user; name one to run it alone:
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8080 \
        --headless -u 10 -r 2 -t 60s --stream-seconds 10 MediaStreamCaller

Tenants, numbers and tokens come from the policy directory ($SWITCHYARD_POLICIES, else
policies/) and the demo tokens of policies/demo.env (variables already set win). The gateway's
own loader reads the policies, so a voice refusal is recognised exactly (the tenant's refusal
TwiML) and reported on a REFUSED row of its own, not as a failure; an SMS answered with an empty
<Response/> (refused, or no route) goes on an EMPTY row. The demo limits are low (bistro: 5
webhooks a second), so refusals are expected; a 403 or a 5xx is a failure.

MediaStreamCaller plays Twilio's side of a bridged `<Connect><Stream>` call (a number whose voice
route is `stream: {upstream: ...}`; in the demo policies acme-health's, to the DEMO runtime's
echo agent): the signed webhook, the signed upgrade, `connected`, `start`, 20 ms frames at
real-time pace for --stream-seconds, each `mark` echoed at once, `stop`. Its rows (see
loadtest/README.md for what each figure means): ADMIT (failures: the webhook answered with the
tenant's refusal), WS `connect`, WS `echo` (frame sent → its echo back), WS `mark` (frame sent →
the mark the agent sends after its echo), STREAM (the whole stream; failures: frames not echoed,
a close other than 1000, a socket error).

For numbers to compare across commits use bench.py, not this: Locust's Python client saturates
long before a one-process gateway does on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import gevent
import gevent.event
import orjson
import websocket  # websocket-client: a blocking client, cooperative under locust's gevent patching
from locust import HttpUser, between, events, task
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario
from stream_call import FRAME, SILENCE, StreamAnswer, stream_of

from gateway.actions.stream import StreamAdmission
from gateway.auth.jwt import mint
from gateway.policy.loader import LoadContext, load_dir
from gateway.protocol import media

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


# Media Streams: MediaStreamCaller.

STREAM_CALLER = CALLERS[0]  # a caller no demo policy blocks
CONNECT_TIMEOUT = 10.0  # s for the upgrade; also each socket read's limit
CATCH_UP = 2.0  # s to wait, after the last frame, for the echoes still on their way
CLOSE_WITHIN = 5.0  # s for the gateway to close after our stop


def _stream_options(parser: Any) -> None:
    parser.add_argument(
        "--stream-seconds", type=float, default=10.0, env_var="SWITCHYARD_STREAM_SECONDS",
        help="MediaStreamCaller: seconds of audio each call streams, in 20 ms frames at real-time pace (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--stream-echo-every", type=int, default=10, env_var="SWITCHYARD_STREAM_ECHO_EVERY",
        help="MediaStreamCaller: report the echo latency of every n-th frame (default 10; 1: every frame)",
    )  # fmt: skip


# Not as a decorator: locust's EventHook.add_listener is untyped, which mypy --strict refuses.
_parser_hook: Any = events.init_command_line_parser
_parser_hook.add_listener(_stream_options)


class Refused(Exception):
    """The webhook answered the tenant's refusal instead of a stream."""


class StreamFailed(Exception):
    """A stream that did not end as it should (frames not echoed, an abnormal close, an error)."""


@dataclass(frozen=True, slots=True)
class StreamLine:
    """A number whose voice route is a bridged stream, and what its refusals look like."""

    tenant: str
    number: str
    account_sid: str
    token: str
    refusals: frozenset[bytes]


def load_stream_lines(host: str) -> list[StreamLine]:
    """Every number whose voice call (from STREAM_CALLER) routes to a bridged stream, as the
    gateway's own router decides it from the same policy files."""
    env = {**scenario.demo_env(), **os.environ}
    tenants = load_dir(POLICIES, LoadContext(env=env, public_url=host))
    lines = []
    for t in tenants.values():
        for number in sorted(t.numbers):
            route = t.route("voice", {"To": [number], "From": [STREAM_CALLER]})
            if route is not None and isinstance(route.call, StreamAdmission):
                refusals = frozenset({t.refusal["voice"], t.budget_refusal["voice"]})
                lines.append(StreamLine(t.id, number, t.account_sid, t.keys[0].decode(), refusals))
    return lines


@dataclass(slots=True)
class CallState:
    """One streamed call on our side: when each frame left, what came back, how it ended."""

    frames: int
    sent_at: list[float] = field(default_factory=list)
    echoes: int = 0
    marks: int = 0
    seq: int = 1  # Twilio's sequenceNumber: start was 1
    close_code: int | None = None
    error: str | None = None
    stopping: bool = False
    all_echoed: gevent.event.Event = field(default_factory=gevent.event.Event)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class MediaStreamCaller(HttpUser):
    """Callers whose calls are streamed: Twilio's side of a bridged <Connect><Stream>."""

    wait_time = between(0.5, 2.0)
    lines: ClassVar[list[StreamLine]] = []

    def on_start(self) -> None:
        if not self.host:
            raise ValueError("give the gateway's URL with --host (the same as its --public-url)")
        self.base = self.host.rstrip("/")
        if not MediaStreamCaller.lines:
            MediaStreamCaller.lines = load_stream_lines(self.base)
        if not MediaStreamCaller.lines:
            raise ValueError(f"no number in {POLICIES} routes its calls to a bridged stream (stream.upstream)")
        self.rng = random.Random()
        options = self.environment.parsed_options
        self.seconds = float(getattr(options, "stream_seconds", 10.0))
        self.echo_every = max(1, int(getattr(options, "stream_echo_every", 10)))

    def _fire(self, kind: str, name: str, ms: float, length: int = 0, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type=kind, name=name, response_time=ms, response_length=length, exception=exception, context={}
        )

    @task
    def streamed_call(self) -> None:
        line = self.rng.choice(self.lines)
        params = scenario.voice_params(self.rng, to=line.number, account_sid=line.account_sid)
        params.update(From=STREAM_CALLER, Caller=STREAM_CALLER)
        answer = self._webhook(line, params)
        if answer is not None:
            self._stream(line, params, answer)

    def _webhook(self, line: StreamLine, params: dict[str, str]) -> StreamAnswer | None:
        """The signed voice webhook; its stream, or None (refused: an ADMIT failure; else a failure)."""
        url = self.base + scenario.VOICE_PATH
        headers = {
            **scenario.twilio_headers(scenario.sign(line.token, url, params)),
            "I-Twilio-Idempotency-Token": scenario.idempotency_token(),
        }
        name = f"voice {line.tenant} (stream)"
        with self.client.post(
            scenario.VOICE_PATH, data=urlencode(params), headers=headers, name=name, catch_response=True
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {answer.text[:120]}")
                return None
            body = answer.content or b""
            admission = f"admission {line.tenant}"
            if body in line.refusals or b"<Reject" in body:
                # The gateway answered as it should: the refusal is the tenant's, on a row of its own.
                answer.success()
                self._fire("ADMIT", admission, 0, len(body), Refused("answered with the tenant's refusal TwiML"))
                return None
            found = stream_of(body.decode("utf-8", "replace"))
            if found is None:
                answer.failure(f"no <Connect><Stream> in the answer: {body[:120]!r}")
                return None
            answer.success()
            self._fire("ADMIT", admission, 0, len(body))
            return found

    def _stream(self, line: StreamLine, params: dict[str, str], answer: StreamAnswer) -> None:
        """The stream, from the signed upgrade to the gateway's close."""
        tenant = line.tenant
        signature = RequestValidator(line.token).compute_signature(answer.url, {})
        began = time.perf_counter()
        try:
            # Any: websocket-client's WebSocket types some methods only (shutdown is not).
            ws: Any = websocket.create_connection(
                answer.url,
                header={"X-Twilio-Signature": signature},
                timeout=CONNECT_TIMEOUT,
                enable_multithread=True,  # the sender and the reader greenlets share it
                skip_utf8_validation=True,
            )
        except websocket.WebSocketBadStatusException as error:
            self._fire("WS", f"connect {tenant}", _ms(began), 0, StreamFailed(f"upgrade refused: {error.status_code}"))
            return
        except (OSError, websocket.WebSocketException) as error:
            self._fire("WS", f"connect {tenant}", _ms(began), 0, StreamFailed(f"upgrade failed: {error!r}"))
            return
        self._fire("WS", f"connect {tenant}", _ms(began))
        call_sid, account_sid = params["CallSid"], line.account_sid
        stream_sid = "MZ" + self.rng.randbytes(16).hex()
        state = CallState(frames=max(1, round(self.seconds / FRAME)))
        reader = gevent.spawn(self._read, ws, state, stream_sid, tenant)
        try:
            ws.send(media.connected_message())
            ws.send(media.start_message(stream_sid, call_sid, account_sid, answer.parameters))
            start = time.perf_counter()
            for i in range(state.frames):
                delay = start + i * FRAME - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                state.sent_at.append(time.perf_counter())
                ws.send(media.twilio_media_message(stream_sid, state.next_seq(), i + 1, i * 20, SILENCE))
            state.all_echoed.wait(timeout=CATCH_UP)
            state.stopping = True
            ws.send(media.stop_message(stream_sid, state.next_seq(), call_sid, account_sid))
            reader.join(timeout=CLOSE_WITHIN)
            if not reader.dead:
                state.error = state.error or f"not closed by the gateway within {CLOSE_WITHIN:.0f} s of the stop"
        except (OSError, websocket.WebSocketException) as error:
            state.error = state.error or f"send failed: {error!r}"
        finally:
            reader.kill()
            ws.shutdown()
        problem = state.error
        if problem is None and state.echoes < state.frames:
            problem = f"{state.echoes} of {state.frames} frames echoed"
        if problem is None and state.close_code != 1000:
            problem = f"closed with {state.close_code}"
        self._fire("STREAM", f"stream {tenant}", _ms(began), state.echoes, StreamFailed(problem) if problem else None)

    def _read(self, ws: Any, state: CallState, stream_sid: str, tenant: str) -> None:
        """Read until the close: time echoes and marks, echo each mark at once."""
        while True:
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                if state.stopping:
                    return
                continue
            except websocket.WebSocketConnectionClosedException:
                return
            except (OSError, websocket.WebSocketException) as error:
                state.error = state.error or f"read failed: {error!r}"
                return
            now = time.perf_counter()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                state.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                return
            if opcode != websocket.ABNF.OPCODE_TEXT:
                continue
            message = orjson.loads(frame.data)
            event = message.get("event")
            if event == "media" and state.echoes < len(state.sent_at):
                state.echoes += 1
                if state.echoes % self.echo_every == 0:
                    self._fire("WS", f"echo {tenant}", (now - state.sent_at[state.echoes - 1]) * 1000, len(frame.data))
                if state.echoes == state.frames:
                    state.all_echoed.set()
            elif event == "mark":
                name = str(message.get("mark", {}).get("name", ""))
                ws.send(media.twilio_mark_message(stream_sid, state.next_seq(), name))
                state.marks += 1
                prefix, _, number = name.partition("-")
                if prefix == "echo" and number.isdigit() and 0 < int(number) <= len(state.sent_at):
                    self._fire("WS", f"mark {tenant}", (now - state.sent_at[int(number) - 1]) * 1000)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


# The outbound API: OutboundApiClient.

API_TOKEN_TTL = 3600  # s: each user's token outlives any run
API_SCOPES = ("calls:write", "messages:write")
API_TEXTS = ("Your parcel arrives today between 2 and 4 pm.", "Reply YES to confirm your delivery slot.")


@dataclass(frozen=True, slots=True)
class ApiLine:
    """A tenant whose API clients may place calls: its token, numbers and a call source."""

    tenant: str
    numbers: tuple[str, ...]
    token: str
    source: dict[str, str]  # {"url": …} | {"route": …} | {"twiml": …}: what its policy allows


def load_api_lines(host: str) -> list[ApiLine]:
    """Every tenant with an outbound block and an HS256 API key, with a JWT minted for it as
    `switchyard token` does (the gateway's own loader reads the same files)."""
    env = {**scenario.demo_env(), **os.environ}
    tenants = load_dir(POLICIES, LoadContext(env=env, public_url=host))
    lines = []
    for t in tenants.values():
        outbound = t.outbound
        if outbound is None or t.api is None or not t.numbers:
            continue
        try:
            token = mint(t, API_SCOPES, API_TOKEN_TTL, time.time())
        except ValueError:
            continue  # public keys only: its tokens come from its identity provider
        static = [r.name for r in t.routes if r.kind == "voice" and r.call is None and r.reply]
        if outbound.urls:
            source = {"url": min(outbound.urls)}
        elif static:
            source = {"route": static[0]}
        elif outbound.allow_twiml:
            source = {"twiml": "<Response><Say>Hello from the load test.</Say></Response>"}
        else:
            continue
        lines.append(ApiLine(t.id, tuple(sorted(t.numbers)), token, source))
    return lines


class OutboundApiClient(HttpUser):
    """A tenant's worker pool on the outbound API: calls, texts and after-hours races with a
    JWT, some with an Idempotency-Key sent twice (the second must replay the first answer).

    Under `dev.py serve` Twilio's REST API is the demo runtime's stand-in, whose calls last 5 s
    and whose statuses come back through the gateway, freeing each call's slot. A 429 (the api
    bucket, concurrent_calls and its queue, the account's CPS) is a correct answer: counted on
    a LIMITED row, not as a failure; anything else but 201 (200 for after-hours) is a failure,
    and so is a replay that is not marked Idempotent-Replayed with the first SID."""

    wait_time = between(0.5, 2.0)
    lines: ClassVar[list[ApiLine]] = []

    def on_start(self) -> None:
        if not self.host:
            raise ValueError("give the gateway's URL with --host")
        if not OutboundApiClient.lines:
            OutboundApiClient.lines = load_api_lines(self.host.rstrip("/"))
        if not OutboundApiClient.lines:
            raise ValueError(f"no tenant in {POLICIES} has an outbound: block and an HS256 api key")
        self.rng = random.Random()

    def _to(self) -> str:
        return f"+1555{self.rng.randrange(10**7):07d}"

    def _post(
        self, line: ApiLine, path: str, body: Mapping[str, object], key: str | None = None
    ) -> dict[str, Any] | None:
        headers = {"Authorization": f"Bearer {line.token}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        name = f"{path} {line.tenant}"
        ok = 200 if path.endswith("after-hours") else 201
        with self.client.post(path, data=orjson.dumps(body), headers=headers, name=name, catch_response=True) as answer:
            if answer.status_code == 429:
                answer.success()
                self._note("LIMITED", name, answer.content or b"")
                return None
            if answer.status_code != ok:
                answer.failure(f"HTTP {answer.status_code}: {(answer.text or '')[:160]}")
                return None
            answer.success()
            result: dict[str, Any] = orjson.loads(answer.content or b"{}")
            result["_replayed"] = answer.headers.get("Idempotent-Replayed") == "true"
            return result

    def _note(self, request_type: str, name: str, body: bytes) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=0, response_length=len(body), exception=None, context={}
        )

    @task(2)
    def call(self) -> None:
        line = self.rng.choice(self.lines)
        body = {"to": self._to(), "from": self.rng.choice(line.numbers), **line.source}
        if self.rng.random() >= 0.25:
            self._post(line, "/api/v1/calls", body)
            return
        # A worker that retries after a lost answer: the same key twice, one call placed.
        key = f"load-{self.rng.getrandbits(64):016x}"
        first = self._post(line, "/api/v1/calls", body, key)
        if first is None:
            return
        again = self._post(line, "/api/v1/calls", body, key)
        if again is not None and not (again["_replayed"] and again.get("sid") == first.get("sid")):
            self.environment.events.request.fire(
                request_type="REPLAY", name=f"/api/v1/calls {line.tenant}", response_time=0, response_length=0,
                exception=AssertionError("a retried Idempotency-Key placed a second call"), context={},
            )  # fmt: skip

    @task(3)
    def message(self) -> None:
        line = self.rng.choice(self.lines)
        body = {"to": self._to(), "from": self.rng.choice(line.numbers), "body": self.rng.choice(API_TEXTS)}
        self._post(line, "/api/v1/messages", body)

    @task(1)
    def after_hours(self) -> None:
        line = self.rng.choice(self.lines)
        body = {"to": self._to(), "from": self.rng.choice(line.numbers), "body": API_TEXTS[1], **line.source}
        race = self._post(line, "/api/v1/after-hours", body)
        if race is None:
            return
        for leg in ("call", "message"):
            status = race.get(leg, {}).get("status")
            if status == 429:
                self._note("LIMITED", f"after-hours {leg} {line.tenant}", b"")
            elif status != 201:
                self.environment.events.request.fire(
                    request_type="LEG", name=f"after-hours {leg} {line.tenant}", response_time=0, response_length=0,
                    exception=AssertionError(f"leg answered {status}: {race.get(leg)}"), context={},
                )  # fmt: skip
