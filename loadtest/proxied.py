"""The proxied bench targets: three ways to one upstream, compared with each other.

  nginx-proxy    nginx `proxy_pass` to the upstream (loadtest/nginx_proxy.py);
  aiohttp-proxy  a plain aiohttp forwarding proxy (loadtest/aiohttp_proxy.py);
  upstream       the gateway, its voice route `upstream: {url: <the upstream>/twilio/voice}`:
                 it verifies, charges the limits, re-signs and forwards, and answers the TwiML.

The upstream is one bare aiohttp app (loadtest/bare_app.py) shared by all three: it answers the
bench TwiML, so every target answers the same bytes. It runs on the servers' CPU, beside the
proxy under test: each target's whole path (proxy + upstream) shares one CPU, the load generator
has the other, and the path's CPU (both processes) is what a round's server cpu figures count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nginx_proxy
import scenario

HERE = Path(__file__).resolve().parent
PROXIES = ("nginx-proxy", "aiohttp-proxy")  # forward anything, check nothing
GATEWAY = "upstream"
PROXIED = (*PROXIES, GATEWAY)
APP = "upstream-app"  # the upstream's process name (logs): not `upstream`, the gateway target's


def app_argv(port: int) -> list[str]:
    """The upstream: the bare app, answering the bench TwiML to POST /twilio/voice."""
    return [sys.executable, str(HERE / "bare_app.py"), "--port", str(port)]


def proxy_argv(name: str, port: int, upstream_port: int, workdir: Path) -> list[str]:
    """The argv of a plain proxy target on `port` forwarding to the upstream."""
    if name == "nginx-proxy":
        return nginx_proxy.prepare(workdir / "nginx", port, upstream_port)
    if name == "aiohttp-proxy":
        upstream = f"http://127.0.0.1:{upstream_port}"
        return [sys.executable, str(HERE / "aiohttp_proxy.py"), "--port", str(port), "--upstream", upstream]
    raise ValueError(f"not a plain proxy target: {name}")


def gateway_policy(upstream_port: int) -> str:
    """The bench policy with the voice route forwarded to the upstream."""
    return scenario.policy_yaml(f"upstream: {{url: http://127.0.0.1:{upstream_port}{scenario.VOICE_PATH}}}")
