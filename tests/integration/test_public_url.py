"""Which URL a real gateway process checks signatures against: never one a client's Host header makes up.

Signatures come from twilio's RequestValidator (tests/support/twilio.py), never from the gateway's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.processes import GatewayProcess
from tests.support.redis_server import free_port
from tests.support.twilio import BISTRO_NUMBER, BISTRO_TOKEN, ENV, signed_form, voice_params

POLICIES = Path(__file__).resolve().parents[2] / "policies"
EVIL = "http://evil.example/twilio/voice"
SECOND = "https://voice.example.org/edge"  # a proxy in front strips /edge
WELCOME = "Thanks for calling the Bistro"  # bistro's voice route: the signature passed


def _policies(directory: Path, names: Sequence[str] = ("*.yaml",)) -> Path:
    directory.mkdir()
    for pattern in names:
        for policy in POLICIES.glob(pattern):
            (directory / policy.name).write_text(policy.read_text())
    return directory


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayProcess]]:
    """Four gateways, started together: one public URL, two, and none behind a (non-)trusted proxy."""
    root = tmp_path_factory.mktemp("public-url")
    everything = _policies(root / "all")
    # Without a public URL acme's stream route has no URL of its own: serve only bistro.
    bistro = _policies(root / "bistro", ["bistro.yaml"])
    port = free_port()
    started = {
        "one": GatewayProcess(everything, ENV),
        "two": GatewayProcess(everything, ENV, public_urls=[f"http://127.0.0.1:{port}", SECOND], port=port),
        "proxied": GatewayProcess(bistro, ENV, ["--trusted-proxy", "127.0.0.1/32"], public_urls=[]),
        "untrusted": GatewayProcess(bistro, ENV, ["--trusted-proxy", "10.0.0.0/8"], public_urls=[]),
    }
    try:
        yield {name: process.wait_ready() for name, process in started.items()}
    finally:
        for process in started.values():
            process.stop()


def post(gateway: GatewayProcess, signed_for: str, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST a bistro voice webhook signed for `signed_for` to the gateway's /twilio/voice with extra headers."""
    signature, body = signed_form(BISTRO_TOKEN, signed_for, voice_params(to=BISTRO_NUMBER))
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1
        gateway.base + "/twilio/voice", data=body, headers={**signature, **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        pytest.param("one", {"Host": "evil.example"}, id="one-public-url"),
        pytest.param("two", {"Host": "evil.example"}, id="two-public-urls"),
        pytest.param("untrusted", {"Host": "evil.example"}, id="no-public-url-untrusted-peer"),
        pytest.param(
            "untrusted",
            {"Host": "evil.example", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example"},
            id="no-public-url-untrusted-forwarded",
        ),
    ],
)
def test_request_signed_for_the_host_it_names_is_refused(
    gateways: dict[str, GatewayProcess], name: str, headers: dict[str, str]
) -> None:
    """A request validly signed for http://evil.example/twilio/voice, sent with `Host: evil.example`, gets 403."""
    status, _ = post(gateways[name], EVIL, headers)
    assert status == 403


@pytest.mark.parametrize("name", ["one", "two"])
def test_request_signed_for_the_first_public_url_passes(gateways: dict[str, GatewayProcess], name: str) -> None:
    """The control: the same request signed for the URL the gateway is called by gets the route's TwiML."""
    status, text = post(gateways[name], gateways[name].base + "/twilio/voice", {})
    assert status == 200
    assert WELCOME in text


def test_request_signed_for_the_second_public_url_with_its_host_passes(gateways: dict[str, GatewayProcess]) -> None:
    """With two public URLs, a request signed for the second (path prefix and all) and carrying its Host passes."""
    status, text = post(gateways["two"], SECOND + "/twilio/voice", {"Host": "voice.example.org"})
    assert status == 200
    assert WELCOME in text
    status, _ = post(gateways["two"], SECOND + "/twilio/voice", {})  # right signature, Host names the first URL
    assert status == 403


def test_trusted_proxy_forwarded_url_passes(gateways: dict[str, GatewayProcess]) -> None:
    """Without a public URL, a trusted proxy's X-Forwarded-Proto/-Host say which URL Twilio signed."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example.com"}
    status, text = post(gateways["proxied"], "https://gw.example.com/twilio/voice", forwarded)
    assert status == 200
    assert WELCOME in text


def test_no_public_url_and_untrusted_peer_refuses_even_its_own_url(gateways: dict[str, GatewayProcess]) -> None:
    """Without a public URL, a peer outside the trusted proxies is refused even when signed for the real URL."""
    gateway = gateways["untrusted"]
    status, _ = post(gateway, gateway.base + "/twilio/voice", {})
    assert status == 403


def test_serve_without_public_url_or_trusted_proxy_refuses_to_start(tmp_path: Path) -> None:
    """`serve` with neither a public URL nor a trusted proxy exits 2, saying why and what to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    command = [sys.executable, "-m", "gateway", "serve", "--policies", str(_policies(tmp_path / "p")), "--port", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env={**env, **ENV}, timeout=60, check=False)
    assert result.returncode == 2
    for words in (
        "Twilio signs",
        "the Host header",
        "--public-url https://",
        "SWITCHYARD_PUBLIC_URL=",
        "--trusted-proxy",
    ):
        assert words in result.stderr
