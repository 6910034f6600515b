"""Malformed requests against a real gateway process: a 4xx with a fixed body, one access line,
no traceback, and none of the request's bytes echoed in the reply or the log."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.server import HttpConnection, client_fault
from tests.support.processes import GatewayProcess
from tests.support.twilio import signed_form, voice_params

TOKEN = "malformed-test-token-0000000000001"
ACCOUNT = "AC" + "9" * 32
NUMBER = "+15558880003"
POLICY = f"""\
twilio: {{account_sid: {ACCOUNT}, auth_token_env: MALFORMED_TEST_TOKEN}}
numbers: ["{NUMBER}"]
routes:
  - match: {{kind: voice}}
    say: {{text: "hello", hangup: false}}
"""
ENV = {"MALFORMED_TEST_TOKEN": TOKEN}
SECRET = b"sk-SECRET-7f3a9c2e5b8d1f4a6c0e9b3d7a5f2c8e"
BEARER = b"Authorization: Bearer " + SECRET
IO_TIMEOUT = 10.0
PHRASES = {400: "Bad Request", 431: "Request Header Fields Too Large"}


def _request(*lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


MALFORMED = [
    pytest.param(
        _request(b"GET /api/v1/limits HTTP/1.1", b"Host: gw", BEARER + b"A" * 9000), 431, id="header-line-9KB"
    ),
    pytest.param(_request(b"GET /" + SECRET + b"a" * 9000 + b" HTTP/1.1", b"Host: gw"), 431, id="request-line-9KB"),
    pytest.param(
        _request(b"GET / HTTP/1.1", b"Host: gw", *(b"X-Header-%d: %s" % (i, SECRET) for i in range(200))),
        431,
        id="too-many-headers",
    ),
    pytest.param(
        _request(b"POST /twilio/voice HTTP/1.1", b"Host: gw", BEARER, b"Content-Length: 12" + SECRET, body=b"To=1"),
        400,
        id="bad-content-length",
    ),
    pytest.param(
        _request(
            b"POST /twilio/voice HTTP/1.1",
            b"Host: gw",
            BEARER,
            b"Content-Length: 9",
            b"Transfer-Encoding: chunked",
            body=b"4\r\nTo=1\r\n0\r\n\r\n",
        ),
        400,
        id="content-length-and-chunked",
    ),
    pytest.param(
        _request(b"GET / HTTP/1.1", b"Host: gw", b"X Token" + SECRET + b": v"), 400, id="space-in-header-name"
    ),
    pytest.param(_request(b"GET / HTTP/1.1", b"Host: gw", b"X-Token: a\x00" + SECRET), 400, id="nul-in-header-value"),
    pytest.param(
        _request(b"POST /twilio/voice HTTP/1.1", b"Host: gw", b"Transfer-Encoding: chunked", body=b"zz" + SECRET),
        400,
        id="bad-chunk-size",
    ),
]


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "malformed.yaml").write_text(POLICY)
    return directory


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a new connection; everything the gateway sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.slow
@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED)
def test_malformed_request_is_one_access_line_and_no_echo(policies: Path, request_bytes: bytes, status: int) -> None:
    """A malformed request gets its 4xx with a fixed body, one access line, no traceback, no echoed bytes."""
    gateway = GatewayProcess(policies, ENV, access_log=True)
    try:
        reply = exchange(gateway.wait_ready().port, request_bytes)
        gateway.proc.send_signal(signal.SIGTERM)  # the drain flushes the access log; then read it all
        assert gateway.wait_exit(IO_TIMEOUT) == 0
    finally:
        gateway.stop()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ", 2)[1] == str(status).encode()
    assert body == f"{status} {PHRASES[status]}\n".encode()
    assert SECRET not in reply
    output = gateway.output(None)
    assert "Traceback" not in output
    assert SECRET.decode() not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [r for r in records if "method" in r and r["path"] != "/healthz"]  # /healthz: wait_ready's polls
    assert [r["status"] for r in access] == [status]
    assert not [r for r in records if r.get("level") in ("WARNING", "ERROR", "CRITICAL")]


def server_header(port: int, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, str]:
    """The status and Server header of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, str(response.getheader("Server"))
    finally:
        connection.close()


@pytest.mark.slow
def test_every_response_says_server_switchyard(policies: Path) -> None:
    """The Server header is `switchyard` on answers, refusals, errors and malformed-request replies."""
    gateway = GatewayProcess(policies, ENV)
    try:
        port = gateway.wait_ready().port
        head, body = signed_form(TOKEN, gateway.base + "/twilio/voice", voice_params(to=NUMBER, AccountSid=ACCOUNT))
        answers = [
            server_header(port, "GET", "/healthz"),
            server_header(port, "GET", "/readyz"),
            server_header(port, "GET", "/no-such-path"),
            server_header(port, "GET", "/twilio/voice"),
            server_header(port, "POST", "/twilio/voice", body, **head),
            server_header(port, "POST", "/twilio/voice", body, **{**head, "X-Twilio-Signature": "forged"}),
        ]
        reply = exchange(port, _request(b"GET / HTTP/1.1", BEARER + b"A" * 9000))
    finally:
        gateway.stop()
    status = int(reply.split(b" ", 2)[1])
    server = next(line[len(b"server: ") :] for line in reply.split(b"\r\n") if line.lower().startswith(b"server: "))
    answers.append((status, server.decode()))
    assert answers == [(code, "switchyard") for code in (200, 200, 404, 405, 200, 403, 431)]


@pytest.mark.parametrize(
    ("exc", "client_gone", "status"),
    [
        pytest.param(aiohttp.http_exceptions.LineTooLong(b"x", 8190), False, 431, id="line-too-long"),
        pytest.param(aiohttp.http_exceptions.BadHttpMessage("Too many headers received"), False, 431, id="headers"),
        pytest.param(aiohttp.http_exceptions.BadHttpMessage("Invalid header"), False, 400, id="bad-message"),
        pytest.param(aiohttp.web_protocol.RequestPayloadError("bad chunk"), False, 400, id="payload"),
        pytest.param(ConnectionResetError(), True, 499, id="client-left"),
        pytest.param(ConnectionResetError(), False, None, id="upstream-reset-ours"),
        pytest.param(RuntimeError("bug"), True, None, id="bug-ours"),
    ],
)
def test_client_faults_are_told_from_ours(exc: BaseException, client_gone: bool, status: int | None) -> None:
    """Only what the client caused is a client fault; a reset while the client is connected is ours."""
    assert client_fault(exc, client_gone=client_gone) == status


async def test_a_fault_of_ours_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A handler's bug is still logged at ERROR with its traceback; a malformed request logs nothing at INFO."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        raise RuntimeError("a bug of ours")

    logger = logging.getLogger("tests.malformed.http")
    caplog.set_level(logging.DEBUG, logger=logger.name)
    loop = asyncio.get_running_loop()
    server = web.Server(handler)
    listener = await loop.create_server(lambda: HttpConnection(server, loop=loop, logger=logger), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 500
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(b"GET / HTTP/1.1", BEARER + b"A" * 9000))
        reply = await asyncio.wait_for(reader.read(), IO_TIMEOUT)
        writer.close()
        await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
        await server.shutdown()
    assert reply.startswith(b"HTTP/1.0 431 ") and SECRET not in reply
    records = [r for r in caplog.records if r.name == logger.name]
    assert [(r.levelname, r.exc_info and r.exc_info[0]) for r in records if r.levelno >= logging.INFO] == [
        ("ERROR", RuntimeError)
    ]
    assert not [r for r in records if SECRET.decode() in r.getMessage()]
