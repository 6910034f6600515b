"""Pure TwiML rendering with twilio's own classes: plain values in, UTF-8 bytes out.

Run when a policy loads (static actions) or when an action that calls out builds its answer,
never parsed again per request.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Connect, VoiceResponse

XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
NOT_CONFIGURED = b'<?xml version="1.0" encoding="UTF-8"?><Response><Say>This number is not configured.</Say></Response>'
EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response />'
REJECT_BUSY = b'<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy" /></Response>'
VOICE_FALLBACK = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response>'
    b"<Say>Sorry, we cannot take your call right now. Please try again later.</Say>"
    b"<Hangup /></Response>"
)


def _bytes(response: VoiceResponse | MessagingResponse) -> bytes:
    return str(response.to_xml()).encode()


def say(text: str, *, voice: str | None = None, language: str | None = None, hangup: bool = True) -> bytes:
    response = VoiceResponse()
    response.say(text, voice=voice, language=language)
    if hangup:
        response.hangup()
    return _bytes(response)


def reject(reason: str = "busy") -> bytes:
    response = VoiceResponse()
    response.reject(reason=reason)
    return _bytes(response)


def redirect(url: str, method: str = "POST") -> bytes:
    response = VoiceResponse()
    response.redirect(url, method=method)
    return _bytes(response)


def stream(url: str, parameters: Mapping[str, str], *, name: str | None = None, track: str | None = None) -> bytes:
    """`<Connect><Stream>`: values travel as <Parameter>s because Twilio drops a query string."""
    response = VoiceResponse()
    connect = Connect()
    element = connect.stream(url=url, name=name, track=track)
    for key, value in parameters.items():
        element.parameter(name=key, value=value)
    response.append(connect)
    return _bytes(response)


def message(text: str) -> bytes:
    response = MessagingResponse()
    response.message(text)
    return _bytes(response)


def raw(text: str) -> bytes:
    """Operator-written TwiML, checked once: well-formed XML whose root is <Response>."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - trusted policy file, not request input
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed TwiML: {exc}") from None
    if root.tag != "Response":
        raise ValueError(f"TwiML must have <Response> as its root, not <{root.tag}>")
    # Drop the operator's declaration: whatever encoding it names, we send UTF-8 and say so.
    body = re.sub(r"^\s*<\?xml[^>]*\?>", "", text).strip()
    return XML_DECLARATION + body.encode()
