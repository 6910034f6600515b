"""SIGTERM drains a real gateway process: what is in flight finishes, new connections are refused.

Requests go over raw sockets, so a test controls exactly how much of each has been sent. A
webhook is "held" by sending its head with `Expect: 100-continue`: the interim 100 the gateway
answers proves it has parsed the head and routed the request, the event a test waits for instead
of a sleep; half the body follows, the rest only after SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import GatewayProcess
from tests.support.twilio import signed_form, voice_params

pytestmark = pytest.mark.slow

TOKEN = "shutdown-test-token-00000000000001"
ACCOUNT = "AC" + "8" * 32
NUMBER = "+15558880002"
POLICY = f"""\
twilio: {{account_sid: {ACCOUNT}, auth_token_env: SHUTDOWN_TEST_TOKEN}}
numbers: ["{NUMBER}"]
limits:
  voice: {{rate: 1000, per: second, burst: 1000}}
routes:
  - match: {{kind: voice}}
    say: {{text: "drained", hangup: false}}
"""
ENV = {"SHUTDOWN_TEST_TOKEN": TOKEN}
HELD = 50
IO_TIMEOUT = 10.0  # bounds a broken gateway; a working one answers in milliseconds
EXIT_TIMEOUT = 15.0
GRACE = "30"  # seconds: longer than any of these tests, so nothing is cut by the clock
OPEN: list[Connection] = []


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "shutdown.yaml").write_text(POLICY)
    return directory


Start = Callable[..., GatewayProcess]


@pytest.fixture
def start(policies: Path) -> Iterator[Start]:
    """Starts gateways on the test's policies (extra flags as arguments); all are stopped after."""
    started: list[GatewayProcess] = []

    def make(*args: str, access_log: bool = False) -> GatewayProcess:
        process = GatewayProcess(policies, ENV, ["--grace-period", GRACE, *args], access_log=access_log)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture(autouse=True)
def close_connections() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One raw HTTP/1.1 connection to a gateway."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT)
        self.reader = self.sock.makefile("rb")
        OPEN.append(self)

    def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.gateway.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def read_response(self) -> Response:
        """The next final response (interim 1xx ones skipped)."""
        while True:
            status = int(self.reader.readline().split(b" ", 2)[1])
            headers: dict[str, str] = {}
            while line := self.reader.readline().rstrip(b"\r\n"):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                return Response(status, headers, self.reader.read(int(headers.get("content-length", "0"))))

    def closed_by_peer(self) -> bool:
        """The gateway closed the connection: a read returns end-of-file (or a reset)."""
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def get(self, path: str) -> Response:
        self.send_head("GET", path, {})
        return self.read_response()

    def webhook(self, call: int) -> Response:
        head, body = _signed(self.gateway, call)
        self.send_head("POST", "/twilio/voice", {**head, "Content-Length": str(len(body))})
        self.sock.sendall(body)
        return self.read_response()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class HeldWebhook(Connection):
    """A signed voice webhook whose head and half its body are sent; finish() sends the rest."""

    def __init__(self, gateway: GatewayProcess, call: int) -> None:
        super().__init__(gateway)
        head, body = _signed(gateway, call)
        self.send_head("POST", "/twilio/voice", {**head, "Content-Length": str(len(body)), "Expect": "100-continue"})
        assert self.reader.readline() == b"HTTP/1.1 100 Continue\r\n" and self.reader.readline() == b"\r\n"
        half = len(body) // 2
        self.sock.sendall(body[:half])
        self.rest = body[half:]

    def finish(self) -> Response:
        self.sock.sendall(self.rest)
        return self.read_response()


def _signed(gateway: GatewayProcess, call: int) -> tuple[dict[str, str], bytes]:
    params = voice_params(to=NUMBER, AccountSid=ACCOUNT, CallSid=f"CA{call:032x}")
    return signed_form(TOKEN, gateway.base + "/twilio/voice", params)


def assert_twiml(response: Response) -> None:
    """The policy's answer, on a connection the gateway closes after it."""
    assert response.status == 200, response
    say = ET.fromstring(response.body)[0]
    assert (say.tag, say.text) == ("Say", "drained")
    assert response.headers["connection"] == "close"


def test_half_sent_webhooks_are_answered_after_sigterm(start: Start) -> None:
    """50 webhooks half sent when SIGTERM arrives all get their TwiML, and the process exits 0."""
    gateway = start().wait_ready()
    held = [HeldWebhook(gateway, call) for call in range(HELD)]
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    for webhook in held:
        assert_twiml(webhook.finish())
        assert webhook.closed_by_peer()
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0
    assert "cutting" not in gateway.output(None)


def test_keep_alive_connections_are_answered_during_the_drain(start: Start) -> None:
    """After SIGTERM new connections are refused; idle keep-alive ones are answered, Connection: close."""
    gateway = start().wait_ready()
    held = HeldWebhook(gateway, 0)  # keeps the drain busy, so the idle connections are not closed yet
    kept = [Connection(gateway) for _ in range(5)]
    for call, connection in enumerate(kept, start=1):
        before = connection.webhook(call)
        assert before.status == 200 and "connection" not in before.headers  # keep-alive
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=IO_TIMEOUT)
    for call, connection in enumerate(kept, start=100):
        assert_twiml(connection.webhook(call))
        assert connection.closed_by_peer()
    assert_twiml(held.finish())
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0


def test_silent_keep_alive_connections_do_not_hold_the_drain(start: Start) -> None:
    """With nothing in flight, idle keep-alive connections are closed after a short linger, well
    before a long grace period: the process exits 0 and the connections see the close."""
    gateway = start("--grace-period", "120").wait_ready()
    idle = [Connection(gateway) for _ in range(3)]
    for connection in idle:
        assert connection.get("/healthz").status == 200
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0  # EXIT_TIMEOUT is far below the 120 s grace period
    assert all(connection.closed_by_peer() for connection in idle)


def test_grace_period_cuts_what_is_left(start: Start) -> None:
    """At the grace period's end an unfinished request is cut (WARNING), idle connections closed, exit 0."""
    gateway = start("--grace-period", "0.5").wait_ready()
    held = HeldWebhook(gateway, 0)
    idle = Connection(gateway)
    assert idle.get("/healthz").status == 200
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0
    assert held.closed_by_peer() and idle.closed_by_peer()
    assert "grace period of 0.5s over, cutting 1 unfinished request(s)" in gateway.output(None)


def test_readyz_answers_503_while_draining(start: Start) -> None:
    """/readyz is 200 before SIGTERM and 503 "draining" during the drain."""
    gateway = start().wait_ready()
    held = HeldWebhook(gateway, 0)
    probe = Connection(gateway)
    ready = probe.get("/readyz")
    assert ready.status == 200 and json.loads(ready.body)["status"] == "ready"
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    draining = probe.get("/readyz")
    assert draining.status == 503 and json.loads(draining.body)["status"] == "draining"
    assert draining.headers["connection"] == "close"
    assert_twiml(held.finish())
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0


def test_second_sigterm_exits_at_once(start: Start) -> None:
    """A second SIGTERM during the drain exits 1 at once, cutting the request still in flight."""
    gateway = start().wait_ready()
    held = HeldWebhook(gateway, 0)
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.wait_exit(EXIT_TIMEOUT) == 1  # the grace period (30 s) is not waited for
    assert held.closed_by_peer()
    assert "got a second SIGTERM: exiting at once, cutting 1 request(s)" in gateway.output(None)


def test_access_lines_of_drained_requests_are_written(start: Start) -> None:
    """The access log, flushed at exit, has a line for each webhook answered during the drain."""
    gateway = start(access_log=True).wait_ready()
    held = [HeldWebhook(gateway, call) for call in range(5)]
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    for webhook in held:
        assert_twiml(webhook.finish())
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0
    records = [json.loads(line) for line in gateway.output(None).splitlines() if line.startswith("{")]
    answered = [r for r in records if r.get("path") == "/twilio/voice" and r.get("status") == 200]
    assert len(answered) == 5
    assert records[-1]["msg"].endswith(" stopped")


@pytest.mark.redis
def test_workers_drain_half_sent_webhooks(start: Start, redis_url: str) -> None:
    """--workers 2 on Redis: SIGTERM to the supervisor drains both workers; 50 half-sent webhooks answered."""
    gateway = start("--workers", "2", "--limiter", redis_url).wait_ready()
    gateway.wait_output("serving on", count=2)  # both workers listen: the kernel spreads the 50
    held = [HeldWebhook(gateway, call) for call in range(HELD)]
    gateway.proc.send_signal(signal.SIGTERM)
    gateway.wait_refusing()
    for webhook in held:
        assert_twiml(webhook.finish())
    assert gateway.wait_exit(EXIT_TIMEOUT) == 0
    assert gateway.output(None).count(' stopped"}') == 2
