"""The demo runtime on 127.0.0.1: its tenant runtimes check the gateway's re-signed requests
with twilio's RequestValidator, its OpenAI stand-in answers in OpenAI's shape, the example
policies answer through it end to end, and the process stops with its parent."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

import aiohttp
import orjson
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from gateway.demo.runtime import create_app
from gateway.demo.twilio_rest import TwilioApi
from tests.support.gateway import POLICIES, Client, MakeClient, post
from tests.support.servers import running, serve
from tests.support.twilio import (
    BISTRO_NUMBER,
    BISTRO_TOKEN,
    DEMO_OPENAI_KEY,
    ENV,
    NORTHWIND_TOKEN,
    signed_form,
    signed_json,
    sms_params,
    voice_params,
)
from tests.support.upstream import Runtime

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"northwind": NORTHWIND_TOKEN, "bistro": BISTRO_TOKEN}
NORTHWIND_NUMBER = "+15553450001"
NORTHWIND_SID = "AC00000000000000000000000000000003"
DEMO_IN_POLICIES = "http://127.0.0.1:8090"
DEMO_STREAM_IN_POLICIES = "ws://127.0.0.1:8090"  # acme-health's bridged stream: the echo agent
RUNTIME_SAYS = "Northwind's runtime here, the switchyard demo runtime."
STARTED = "switchyard DEMO runtime — not for production: http://127.0.0.1:"
PROCESS_WAIT = 20.0  # bounds a broken start or stop, not a normal one (the parent is polled each second)


async def _demo(tokens: dict[str, str], key: str) -> AsyncIterator[str]:
    runner, port = await serve(create_app(tokens, key))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    """The demo runtime knowing the test tokens and key; its base URL."""
    async for base in _demo(TOKENS, DEMO_OPENAI_KEY):
        yield base


@pytest.fixture
async def wrong_demo() -> AsyncIterator[str]:
    """A demo runtime holding other secrets than the gateway: it refuses every request."""
    async for base in _demo({"northwind": "not-the-gateways-token", "bistro": "nor-this"}, "another-key"):
        yield base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _northwind_call() -> dict[str, str]:
    return voice_params(to=NORTHWIND_NUMBER, AccountSid=NORTHWIND_SID)


async def test_a_request_signed_for_the_runtimes_url_gets_twiml(demo: str, http: aiohttp.ClientSession) -> None:
    """A form signed by twilio's RequestValidator for the runtime's own URL: TwiML saying where it came from."""
    url = f"{demo}/northwind/voice"
    headers, body = signed_form(NORTHWIND_TOKEN, url, _northwind_call())
    async with http.post(url, data=body, headers=headers) as answer:
        assert (answer.status, answer.content_type) == (200, "text/xml")
        text = await answer.text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Say>')
    assert RUNTIME_SAYS in text


async def test_forged_or_misdirected_signatures_get_403(demo: str, http: aiohttp.ClientSession) -> None:
    """A made-up signature, one for another URL and one with another tenant's token are refused."""
    url = f"{demo}/northwind/voice"
    params = _northwind_call()
    _, body = signed_form(NORTHWIND_TOKEN, url, params)
    signatures = [
        "forged",
        signed_form(NORTHWIND_TOKEN, "http://gw.test/twilio/voice", params)[0]["X-Twilio-Signature"],
        signed_form(BISTRO_TOKEN, url, params)[0]["X-Twilio-Signature"],
    ]
    for signature in signatures:
        headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        async with http.post(url, data=body, headers=headers) as answer:
            assert (answer.status, answer.content_type) == (403, "text/plain")
    async with http.post(f"{demo}/nobody/voice", data=body, headers=headers) as answer:
        assert answer.status == 404


async def test_an_sms_is_answered_with_a_message_quoting_it(demo: str, http: aiohttp.ClientSession) -> None:
    """The SMS runtime answers <Message>, quoting the text it got."""
    url = f"{demo}/northwind/sms"
    headers, body = signed_form(NORTHWIND_TOKEN, url, sms_params(to=NORTHWIND_NUMBER, body="Where is 4471?"))
    async with http.post(url, data=body, headers=headers) as answer:
        text = await answer.text()
    assert answer.status == 200
    assert '<Message>Northwind\'s runtime (switchyard demo) got your text: "Where is 4471?"</Message>' in text


async def test_a_json_body_is_checked_by_its_hash(demo: str, http: aiohttp.ClientSession) -> None:
    """A JSON webhook signed with bodySHA256 is accepted; the same signature over another body is not."""
    body = orjson.dumps({"CallSid": "CA" + "a" * 32})
    url, headers = signed_json(NORTHWIND_TOKEN, f"{demo}/northwind/voice", body)
    async with http.post(url, data=body, headers=headers) as answer:
        assert answer.status == 200 and RUNTIME_SAYS in await answer.text()
    async with http.post(url, data=body + b" ", headers=headers) as answer:
        assert answer.status == 403
    unhashed = RequestValidator(NORTHWIND_TOKEN).compute_signature(f"{demo}/northwind/voice", {})
    async with http.post(
        f"{demo}/northwind/voice", data=body, headers={**headers, "X-Twilio-Signature": unhashed}
    ) as a:
        assert a.status == 403  # JSON without bodySHA256: the body would be unsigned


async def test_chat_completions_answer_in_openais_shape(demo: str, http: aiohttp.ClientSession) -> None:
    """The right key gets a chat.completion with the model echoed, one assistant choice and usage."""
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Open on Sunday?"}],
        "max_tokens": 60,
    }
    auth = {"Authorization": f"Bearer {DEMO_OPENAI_KEY}"}
    async with http.post(f"{demo}/v1/chat/completions", json=request, headers=auth) as answer:
        assert (answer.status, answer.content_type) == (200, "application/json")
        completion = await answer.json()
    content = '(demo model) You said: "Open on Sunday?"'
    assert completion["object"] == "chat.completion" and completion["id"].startswith("chatcmpl-")
    assert completion["model"] == "gpt-4o-mini" and isinstance(completion["created"], int)
    (choice,) = completion["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"] == content
    assert choice["finish_reason"] == "stop"
    prompt_tokens = len("Be brief.Open on Sunday?") // 4 + 1
    completion_tokens = len(content) // 4 + 1
    assert completion["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {DEMO_OPENAI_KEY}"])
async def test_a_wrong_key_gets_401_in_openais_error_shape(
    demo: str, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    """No key, a wrong key or the right one in another scheme: 401 with OpenAI's error object."""
    headers = {"Authorization": authorization} if authorization else {}
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{demo}/v1/chat/completions", json=request, headers=headers) as answer:
        assert answer.status == 401
        error = (await answer.json())["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert "wrong-key" not in error["message"]


async def test_a_malformed_chat_request_gets_400(demo: str, http: aiohttp.ClientSession) -> None:
    """Not JSON, or no messages: 400 naming the parameter, in OpenAI's error shape."""
    auth = {"Authorization": f"Bearer {DEMO_OPENAI_KEY}", "Content-Type": "application/json"}
    async with http.post(f"{demo}/v1/chat/completions", data=b"{", headers=auth) as answer:
        assert answer.status == 400 and (await answer.json())["error"]["type"] == "invalid_request_error"
    async with http.post(f"{demo}/v1/chat/completions", json={"model": "m"}, headers=auth) as answer:
        assert answer.status == 400 and (await answer.json())["error"]["param"] == "messages"


async def test_healthz(demo: str, http: aiohttp.ClientSession) -> None:
    """GET /healthz answers 200 and says it is the demo."""
    async with http.get(f"{demo}/healthz") as answer:
        assert answer.status == 200 and (await answer.json()) == {"status": "ok", "demo": True}


# The example policies through the gateway, pointed at a demo runtime on a free port.


def policies_for(base: str, directory: Path) -> Path:
    """A copy of the example policies whose routes to the demo runtime (http:// and ws://) name
    `base` instead."""
    host = base.removeprefix("http://")
    for policy in POLICIES.glob("*.yaml"):
        text = policy.read_text()
        text = text.replace(DEMO_IN_POLICIES, base).replace(DEMO_STREAM_IN_POLICIES, f"ws://{host}")
        (directory / policy.name).write_text(text)
    assert DEMO_IN_POLICIES in (POLICIES / "northwind.yaml").read_text()
    assert DEMO_IN_POLICIES in (POLICIES / "bistro.yaml").read_text()
    assert DEMO_STREAM_IN_POLICIES in (POLICIES / "acme-health.yaml").read_text()
    return directory


def _ask(words: str) -> dict[str, str]:
    return sms_params(to=BISTRO_NUMBER, body=words)


async def test_example_routes_answer_through_the_demo_runtime(
    make_gateway: MakeClient, demo: str, tmp_path: Path
) -> None:
    """northwind's upstream routes answer the runtime's TwiML (the gateway's signature valid
    for the runtime's URL), and bistro's `ask` texts get the stand-in model's <Message>."""
    gateway: Client = await make_gateway(policies_dir=policies_for(demo, tmp_path))
    status, text = await post(gateway, "/twilio/voice", _northwind_call(), NORTHWIND_TOKEN)
    assert status == 200 and RUNTIME_SAYS in text
    sms = sms_params(to=NORTHWIND_NUMBER, body="Where is 4471?", AccountSid=NORTHWIND_SID)
    status, text = await post(gateway, "/twilio/sms", sms, NORTHWIND_TOKEN)
    assert status == 200 and 'got your text: "Where is 4471?"</Message>' in text
    status, text = await post(gateway, "/twilio/sms", _ask("ASK are you open on Sunday?"), BISTRO_TOKEN)
    assert status == 200
    assert text.endswith('<Response><Message>(demo model) You said: "ASK are you open on Sunday?"</Message></Response>')
    _, menu = await post(gateway, "/twilio/sms", _ask("menu"), BISTRO_TOKEN)
    assert "risotto" in menu  # the static routes are as before


async def test_a_runtime_that_refuses_gets_the_routes_fallback(
    make_gateway: MakeClient, wrong_demo: str, tmp_path: Path
) -> None:
    """A runtime holding another token (403) and a model refusing the key (401): the callers
    get each route's fallback, never an error."""
    gateway: Client = await make_gateway(policies_dir=policies_for(wrong_demo, tmp_path))
    status, text = await post(gateway, "/twilio/voice", _northwind_call(), NORTHWIND_TOKEN)
    assert status == 200 and "Our phone system is down." in text
    status, text = await post(gateway, "/twilio/sms", _ask("ask anything"), BISTRO_TOKEN)
    assert status == 200 and "we cannot answer questions by text right now" in text


async def test_the_rest_stand_in_plays_a_calls_statuses_back_signed(http: aiohttp.ClientSession) -> None:
    """A call created on the demo's Twilio REST stand-in (Basic auth: the account's SID and
    token; a wrong one is Twilio's 401/20003): the event asked for and the completion come to
    its StatusCallback, signed with the account's token as twilio's RequestValidator checks."""
    async with running(Runtime(NORTHWIND_TOKEN)) as runtime:
        app = web.Application()
        TwilioApi({NORTHWIND_SID: NORTHWIND_TOKEN}, call_seconds=0, ring=0, record=False).install(app)
        runner, port = await serve(app)
        try:
            url = f"http://127.0.0.1:{port}/2010-04-01/Accounts/{NORTHWIND_SID}/Calls.json"
            form = [
                ("To", "+15557654321"), ("From", NORTHWIND_NUMBER), ("Url", f"{DEMO_IN_POLICIES}/northwind/voice"),
                ("StatusCallback", runtime.url("/status")), ("StatusCallbackEvent", "answered"),
            ]  # fmt: skip
            wrong = {"Authorization": "Basic " + base64.b64encode(f"{NORTHWIND_SID}:wrong".encode()).decode()}
            right = {
                "Authorization": "Basic " + base64.b64encode(f"{NORTHWIND_SID}:{NORTHWIND_TOKEN}".encode()).decode()
            }
            async with http.post(url, data=form, headers=wrong) as answer:
                assert answer.status == 401 and (await answer.json())["code"] == 20003
            async with http.post(url, data=form, headers=right) as answer:
                assert answer.status == 201
                sid = (await answer.json())["sid"]
            await runtime.wait_for(2)
        finally:
            await runner.cleanup()
    forms = [urllib.parse.parse_qs(seen.body.decode()) for seen in runtime.seen]
    assert [(f["CallSid"], f["CallStatus"]) for f in forms] == [([sid], ["in-progress"]), ([sid], ["completed"])]
    assert all(seen.signature_valid for seen in runtime.seen)


# The process: `python -m gateway.demo`.


class Lines:
    """A pipe's lines, read by a thread, so a test waits for one with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._queue.put(line)
        self._queue.put(None)

    def until(self, wanted: Callable[[str | None], bool], within: float = PROCESS_WAIT) -> str | None:
        """The first line (None: end of the pipe) that `wanted` accepts; AssertionError after `within`."""
        while True:
            try:
                line = self._queue.get(timeout=within)
            except queue.Empty:
                raise AssertionError(f"nothing wanted within {within}s; seen: {self.seen}") from None
            if line is not None:
                self.seen.append(line)
            if wanted(line):
                return line
            if line is None:
                raise AssertionError(f"the pipe ended; seen: {self.seen}")


def _started(lines: Lines) -> int:
    """The port of the runtime whose banner `lines` carries."""
    line = lines.until(lambda line: line is not None and STARTED in line)
    assert line is not None
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match is not None
    return int(match.group(1))


def _env() -> dict[str, str]:
    return {**os.environ, **ENV}


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has exited, as it should
        os.kill(pid, signal.SIGKILL)


# Starts the runtime as its child and stays until told (a line on stdin), then exits.
LAUNCHER = """
import os, subprocess, sys
argv = [sys.executable, "-m", "gateway.demo", "--port", "0", "--policies", sys.argv[1], "--parent", str(os.getpid())]
print(subprocess.Popen(argv).pid, flush=True)
sys.stdin.readline()
"""


def test_the_process_stops_when_its_parent_goes() -> None:
    """The runtime serves while its parent lives, and exits by itself once the parent has exited
    (as it does when the gateway dev.py became stops)."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(POLICIES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert launcher.stdin is not None and launcher.stdout is not None and launcher.stderr is not None
    pid = int(launcher.stdout.readline())
    try:
        lines = Lines(launcher.stderr)  # the runtime's stderr: the launcher's, inherited
        port = _started(lines)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it listens
        launcher.stdin.close()  # the launcher exits
        assert launcher.wait(timeout=PROCESS_WAIT) == 0
        # The pipe ends when the last process holding it, the runtime, has exited.
        assert lines.until(lambda line: line is None) is None
        assert any("has gone: stopping" in line for line in lines.seen), lines.seen
    finally:
        _kill(pid)
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()


def test_sigterm_stops_the_process_cleanly() -> None:
    """SIGTERM: the runtime closes its listener and exits 0."""
    argv = [sys.executable, "-m", "gateway.demo", "--port", "0", "--policies", str(POLICIES)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert process.stderr is not None
    try:
        _started(Lines(process.stderr))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=PROCESS_WAIT) == 0
    finally:
        process.kill()
        process.wait()


def test_a_port_in_use_is_one_clear_line_and_exit_1() -> None:
    """Another listener on the port: the runtime says so in one line and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "gateway.demo", "--port", str(port), "--policies", str(POLICIES)]
        result = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"demo-runtime: switchyard DEMO runtime — not for production: cannot listen on 127.0.0.1:{port}:"
        f" {os.strerror(errno.EADDRINUSE)}"
    ]
