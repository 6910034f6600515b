"""The switchyard DEMO runtime's echo agent: `GET /<tenant>/stream`, the target of a bridged
`stream` route (`stream.upstream`). Not for production: it does nothing but send the caller's
audio back.

The gateway opens this WebSocket once it has verified and admitted Twilio's, and signs the
upgrade anew, as it signs forwarded webhooks: X-Twilio-Signature over this URL (ws://, as the
policy names it) with no parameters, with the tenant's auth token. The upgrade is checked with
twilio's own RequestValidator, as a real runtime would check Twilio's; a forged or stale
signature gets 403 before any WebSocket exists (the gateway then closes Twilio's stream, and
Twilio plays the route's fallback).

Then, per message relayed from Twilio (DESIGN §4, Media Streams):
  - `start`: the stream's SID is remembered, and one line logged: the tenant and the names of
    the customParameters (never their values: they are the TwiML author's, or the caller's);
  - `media`: its payload sent back as our own `media` for the stream, so the caller hears
    themselves; after every MARK_EVERY frames (1 s of 20 ms frames) a `mark` named
    `echo-<frames>`, which Twilio echoes back once the audio before it has played;
  - `dtmf`: a `clear` (Twilio drops the audio not yet played: barge-in), then a mark
    `dtmf-<n>`;
  - `mark`: Twilio's echo of one of ours, counted;
  - `stop`: the socket closed normally (1000), and one line logged with the counts.
The messages are built with gateway.protocol.media, in Twilio's field order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from gateway.protocol import media

log = logging.getLogger("switchyard.demo")

SIGNATURE = "X-Twilio-Signature"
MARK_EVERY = 50  # frames: one mark a second of Twilio's 20 ms frames


@dataclass(slots=True)
class EchoAgent:
    """One stream's echo agent, sans-io: what to send back for each text frame received."""

    tenant: str
    stream_sid: str = ""
    frames: int = 0  # media frames echoed
    marks_sent: int = 0
    marks_echoed: int = 0  # Twilio's echoes of our marks
    dtmf: int = 0
    stopped: bool = False

    def answer(self, text: str) -> list[str]:
        """The frames to send for one frame received (none for what is not for us)."""
        try:
            message: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(message, dict):
            return []
        event = message.get("event")
        if event == "start":
            return self._start(message)
        # Before `start` no stream is known; after it, only this stream's messages count.
        if not self.stream_sid or message.get("streamSid") != self.stream_sid:
            return []
        if event == "media":
            body = message.get("media")
            payload = body.get("payload") if isinstance(body, dict) else None
            if not isinstance(payload, str):
                return []
            self.frames += 1
            replies = [media.media_message(self.stream_sid, payload)]
            if self.frames % MARK_EVERY == 0:
                replies.append(self._mark(f"echo-{self.frames}"))
            return replies
        if event == "dtmf":
            self.dtmf += 1
            return [media.clear_message(self.stream_sid), self._mark(f"dtmf-{self.dtmf}")]
        if event == "mark":
            self.marks_echoed += 1
        elif event == "stop":
            self.stopped = True
        return []

    def _start(self, message: dict[str, Any]) -> list[str]:
        if self.stream_sid:
            return []  # one start per stream
        try:
            start = media.parse_start(message)
        except media.MediaError as error:
            log.info("%s/stream: a start not in Twilio's shape (%s): ignored", self.tenant, error.reason)
            return []
        self.stream_sid = start.stream_sid
        names = ", ".join(sorted(start.custom_parameters)) or "none"
        log.info("%s/stream: start: echo agent answering; customParameters: %s", self.tenant, names)
        return []

    def _mark(self, name: str) -> str:
        self.marks_sent += 1
        return media.mark_message(self.stream_sid, name)


def signature_valid(request: web.Request, validator: Any, url: str) -> bool:
    """X-Twilio-Signature over `url` (this socket's own ws:// URL) with no parameters, as the
    gateway signs an upgrade (and Twilio signs its own)."""
    return bool(validator.validate(url, {}, request.headers.get(SIGNATURE, "")))


async def serve_stream(request: web.Request, tenant: str, validator: Any, url: str) -> web.StreamResponse:
    """`GET /<tenant>/stream` once the tenant is known: 403 for a bad signature, else the echo
    agent on the upgraded WebSocket until `stop` or the gateway closes."""
    if not signature_valid(request, validator, url):
        log.info("%s/stream: X-Twilio-Signature not valid for this URL: 403 (the gateway plays the fallback)", tenant)
        return web.Response(status=403, text="Invalid X-Twilio-Signature.\n")
    # No compression: the gateway asks for none, and audio would not shrink.
    ws = web.WebSocketResponse(max_msg_size=media.MAX_MESSAGE, compress=False)
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text="Upgrade Required: a WebSocket\n", headers={"Upgrade": "websocket"})
    await ws.prepare(request)
    agent = EchoAgent(tenant)
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            for reply in agent.answer(message.data):
                await ws.send_str(reply)
            if agent.stopped:
                break
    except ConnectionError:
        pass  # the gateway went away while we sent: nothing left to answer
    finally:
        log.info(
            "%s/stream: %s: %d frames echoed, %d marks sent, %d echoed back, %d dtmf",
            tenant, "stop" if agent.stopped else "closed without a stop",
            agent.frames, agent.marks_sent, agent.marks_echoed, agent.dtmf,
        )  # fmt: skip
        await ws.close(code=WSCloseCode.OK)
    return ws
