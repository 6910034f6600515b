"""One Twilio-shaped call streamed end to end through a running gateway (`python3 dev.py serve`).

    .venv/bin/python loadtest/stream_call.py [--gateway http://127.0.0.1:8080] [--tenant acme-health]
                                             [--to +15551230001] [--seconds 5]

What Twilio would do, step by step: the inbound-call webhook, signed for `--gateway`/twilio/voice
with the tenant's auth token; the `<Connect><Stream url>` of the answer opened with
X-Twilio-Signature over that ws:// URL; `connected`, `start` (the answer's `<Parameter>`s as
customParameters, the admission token among them), 20 ms frames of μ-law silence at real-time
pace for `--seconds`, each `mark` that comes back echoed at once, then `stop`. By default it calls
acme-health's agent number, whose bridged route goes to the DEMO runtime's echo agent
(gateway/demo/agent.py: each frame sent back, a mark after every 50th).

`--gateway` must be the gateway's public URL (`dev.py serve` uses http://127.0.0.1:8080): that
is the URL Twilio signs. The token is read from the variable the tenant's policy names
(`twilio.auth_token_env`), from the environment, else its demo value in policies/demo.env, as
`dev.py` does.

What it prints, and what each figure means:
- webhook: the answer's status and time, and the stream's parameter names.
- echo: from sending a media frame to receiving the agent's echo of it (the n-th echo is the
  n-th frame's: the echo agent answers in order), i.e. client → gateway → agent → gateway →
  client, the agent's own turn included.
- mark: from sending the frame that a mark follows (the agent names it `echo-<n>` after the n-th
  frame's echo) to receiving that mark. Twilio echoes a mark once the audio before it has
  played; this client echoes at once and plays nothing, so the gateway's own mark round trip
  (the runtime's mark → Twilio's echo, `switchyard.stream.mark_round_trip_ms.p50` on the
  stream's span) measures the gateway → client → gateway leg here, not playback.
- close: the code the gateway closed the stream with (1000 after a stop).
Exit 0 when every frame was echoed and the stream closed with 1000; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import random
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson
import yaml
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

from gateway.protocol import media

FRAME = 0.020  # s of audio per frame
SILENCE = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of μ-law silence
CATCH_UP = 2.0  # s to wait, after the last frame, for the echoes still on their way
CLOSE_WITHIN = 5.0  # s for the gateway to close after our stop


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    """A webhook answer that hands the call to a Media Stream: its URL and <Parameter>s."""

    url: str
    parameters: dict[str, str]


def stream_of(twiml: str) -> StreamAnswer | None:
    """The `<Connect><Stream>` of a voice answer, or None (a refusal, a <Say>, not TwiML)."""
    try:
        root = ET.fromstring(twiml)  # noqa: S314 - the gateway's answer to our own request
    except ET.ParseError:
        return None
    stream = root.find("Connect/Stream")
    if stream is None or not stream.get("url"):
        return None
    return StreamAnswer(stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream})


def tenant_secrets(tenant: str, policies: Path) -> tuple[str, str, str]:
    """The tenant's account SID, first number and auth token (from the variable its policy names)."""
    policy = yaml.safe_load((policies / f"{tenant}.yaml").read_text(encoding="utf-8"))
    variable = policy["twilio"]["auth_token_env"]
    env = {**scenario.demo_env(), **os.environ}
    if not env.get(variable):
        raise SystemExit(f"{variable} is not set (and not in policies/demo.env)")
    return policy["twilio"]["account_sid"], policy["numbers"][0], env[variable]


def summary(values_ms: list[float]) -> str:
    """p50, p90 and max of some latencies in ms."""
    if not values_ms:
        return "none"
    ordered = sorted(values_ms)
    p50 = ordered[(len(ordered) - 1) // 2]
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {p50:.1f} ms, p90 {p90:.1f} ms, max {ordered[-1]:.1f} ms"


@dataclass(slots=True)
class Stream:
    """One stream's client side: what was sent when, and what came back."""

    ws: aiohttp.ClientWebSocketResponse
    stream_sid: str
    loop: asyncio.AbstractEventLoop  # its time() is the clock
    frames: int  # media frames to send
    sent_at: list[float] = field(default_factory=list)  # each media frame's send time
    echo_ms: list[float] = field(default_factory=list)
    marks: list[tuple[str, float | None]] = field(default_factory=list)  # name, frame → mark in ms
    others: int = 0  # clear, or anything else the runtime sent
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(2))  # start was 1
    all_echoed: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self) -> None:
        """Read until the gateway closes: time each echo and mark, echo each mark at once."""
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = self.loop.time()
            event = orjson.loads(message.data)
            kind = event.get("event")
            if kind == "media" and len(self.echo_ms) < len(self.sent_at):
                self.echo_ms.append((now - self.sent_at[len(self.echo_ms)]) * 1000)
                if len(self.echo_ms) == self.frames:
                    self.all_echoed.set()
            elif kind == "mark":
                name = str(event["mark"]["name"])
                await self.ws.send_str(media.twilio_mark_message(self.stream_sid, next(self.seq), name))
                self.marks.append((name, self._after_frame(name, now)))
            else:
                self.others += 1

    def _after_frame(self, name: str, now: float) -> float | None:
        """ms from sending the frame a mark `echo-<n>` follows to the mark; None for other names."""
        prefix, _, number = name.partition("-")
        if prefix != "echo" or not number.isdigit() or not 0 < int(number) <= len(self.sent_at):
            return None
        return (now - self.sent_at[int(number) - 1]) * 1000

    async def play(self) -> None:
        """The media frames at Twilio's pace: frame i leaves at start + i * 20 ms (a late
        one leaves at once, and the schedule does not drift)."""
        begin = self.loop.time()
        for i in range(self.frames):
            await asyncio.sleep(max(0.0, begin + i * FRAME - self.loop.time()))
            self.sent_at.append(self.loop.time())
            await self.ws.send_str(media.twilio_media_message(self.stream_sid, next(self.seq), i + 1, i * 20, SILENCE))


async def call(gateway: str, tenant: str, to: str | None, seconds: float, policies: Path) -> int:
    account_sid, first_number, token = tenant_secrets(tenant, policies)
    rng = random.Random()
    params = scenario.voice_params(rng, to=to or first_number, account_sid=account_sid)
    webhook = gateway.rstrip("/") + scenario.VOICE_PATH
    headers = scenario.twilio_headers(scenario.sign(token, webhook, params))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        began = loop.time()
        async with http.post(webhook, data=urlencode(params).encode(), headers=headers) as answer:
            twiml = await answer.text()
        took = (loop.time() - began) * 1000
        found = stream_of(twiml) if answer.status == 200 else None
        if found is None:
            print(f"webhook: {answer.status} in {took:.1f} ms, no <Connect><Stream> in the answer:\n{twiml}")
            return 1
        names = ", ".join(sorted(found.parameters))
        print(f"webhook: {answer.status} in {took:.1f} ms: <Stream url={found.url!r}> with parameters {names}")

        signature = RequestValidator(token).compute_signature(found.url, {})
        began = loop.time()
        try:
            ws = await http.ws_connect(found.url, headers={"X-Twilio-Signature": signature}, autoclose=True)
        except aiohttp.WSServerHandshakeError as error:
            print(f"stream: the upgrade was refused: {error.status}")
            return 1
        print(f"stream: upgraded in {(loop.time() - began) * 1000:.1f} ms")
        stream_sid = "MZ" + rng.randbytes(16).hex()
        frames = max(1, round(seconds / FRAME))
        stream = Stream(ws, stream_sid, loop, frames)
        async with ws:
            receiving = asyncio.create_task(stream.receive())
            await ws.send_str(media.connected_message())
            await ws.send_str(media.start_message(stream_sid, params["CallSid"], account_sid, found.parameters))
            await stream.play()
            print(f"stream: {frames} frames sent over {loop.time() - stream.sent_at[0]:.2f} s")
            try:
                async with asyncio.timeout(CATCH_UP):
                    await stream.all_echoed.wait()
            except TimeoutError:
                pass  # counted below
            await ws.send_str(media.stop_message(stream_sid, next(stream.seq), params["CallSid"], account_sid))
            try:
                async with asyncio.timeout(CLOSE_WITHIN):
                    await receiving
            except TimeoutError:
                print(f"stream: not closed by the gateway within {CLOSE_WITHIN:.0f} s of the stop")
    timed = [ms for _, ms in stream.marks if ms is not None]
    print(f"echo: {len(stream.echo_ms)} of {frames} frames came back; {summary(stream.echo_ms)}")
    print(f"marks: {len(stream.marks)} received ({', '.join(n for n, _ in stream.marks) or 'none'}), each echoed")
    print(f"mark: frame sent → its mark received: {summary(timed)}")
    if stream.others:
        print(f"other messages from the runtime (clear, …): {stream.others}")
    print(f"close: {ws.close_code}")
    return 0 if len(stream.echo_ms) == frames and ws.close_code == 1000 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="the gateway's public URL")
    parser.add_argument("--tenant", default="acme-health", help="whose policy, number and token (default acme-health)")
    parser.add_argument("--to", default=None, help="the number called (default: the tenant's first)")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio to stream, in seconds (default 5)")
    parser.add_argument("--policies", type=Path, default=scenario.ROOT / "policies", help="the policy directory")
    args = parser.parse_args(argv)
    return asyncio.run(call(args.gateway, args.tenant, args.to, args.seconds, args.policies))


if __name__ == "__main__":
    sys.exit(main())
