"""The TwiML of the `llm` action, pure: a model's answer made safe for Twilio, and the turns of a
spoken conversation held without state (the turn number travels in the `<Gather action>` URL).

A model writes whatever it likes; Twilio takes only well-formed XML and bounded text:
- XML 1.0 forbids most control characters even when escaped, and a document holding one is
  refused by Twilio (error 12100), so they are dropped; `<`, `&`… are escaped by the renderer
  (twilio's TwiML classes, over ElementTree).
- An SMS body is at most 1600 characters (Twilio's Message limit).
- `<Say>` text is at most 4 KB (Twilio documents "4,000 ASCII characters"): cut to 4000 UTF-8
  bytes, so a reply in another script is not over it in bytes while under it in characters.
Both are cut at the last sentence end that keeps at least half the limit, else at the last
space, else hard: a listener hears a whole sentence rather than half a word.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from twilio.twiml.voice_response import Gather, VoiceResponse

from gateway.protocol import twiml

SMS_LIMIT = 1600  # characters
SAY_LIMIT = 4000  # UTF-8 bytes
TURN = "turn"
# A turn number is small (max_turns is at most 20); longer digits are no turn of ours.
MAX_TURN_DIGITS = 4

# XML 1.0 §2.2 Char, negated: what no XML document may hold, escaped or not.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A sentence ends with . ! ? … followed by white space (not "3.5", not "e.g.x"), or with a
# CJK full stop, exclamation or question mark (U+3002, U+FF01, U+FF1F), which no space follows.
_SENTENCE_END = re.compile("[.!?\u2026](?=\\s)|[\u3002\uff01\uff1f]")
_SPACE = re.compile(r"\s")


def clean(text: str) -> str:
    """The text without the characters XML cannot carry, and without surrounding white space."""
    return _NOT_XML.sub("", text).strip()


def cut(text: str, limit: int, *, utf8: bool = False) -> str:
    """`text` cut to at most `limit` characters (or UTF-8 bytes with utf8=True), at a sentence
    end when one keeps at least half of it, else at a space, else exactly at the limit."""
    if (len(text.encode()) if utf8 else len(text)) <= limit:
        return text
    # The longest prefix within the limit; "ignore" drops a character split by the byte cut.
    window = text.encode()[:limit].decode("utf-8", "ignore") if utf8 else text[:limit]
    # One character past the window lets a sentence end at its very edge see what follows it.
    lookahead = text[: len(window) + 1]
    floor = len(window) // 2
    end = max((m.end() for m in _SENTENCE_END.finditer(lookahead) if m.end() <= len(window)), default=0)
    if end >= floor and end > 0:
        return window[:end]
    space = max((m.start() for m in _SPACE.finditer(lookahead) if m.start() <= len(window)), default=0)
    if space >= floor and space > 0:
        return window[:space].rstrip()
    return window


def sms_text(reply: str) -> str:
    return cut(clean(reply), SMS_LIMIT)


def say_text(reply: str) -> str:
    return cut(clean(reply), SAY_LIMIT, utf8=True)


def message(reply: str) -> bytes:
    """<Message> with the reply, cleaned and cut to an SMS body's limit."""
    return twiml.message(sms_text(reply))


def turn_url(base: str, turn: int) -> str:
    """Where the next <Gather> posts: our own voice webhook with the turn in its query. `base` ""
    is the relative `?turn=N`, which Twilio resolves against the URL of the current document:
    the same path (so the same tenant and route), another query."""
    return f"{base}?{TURN}={turn}"


def turn_of(url: str) -> int | None:
    """The turn number in a (verified) webhook URL's query; None when it has none of ours.

    Trusted once the signature is checked: Twilio signs the URL with its query."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name == TURN:
            return int(value) if value.isdigit() and len(value) <= MAX_TURN_DIGITS else None
    return None


def _say(response: VoiceResponse | Gather, text: str, voice: str | None, language: str | None) -> None:
    response.say(say_text(text), voice=voice, language=language)


def listen(
    action: str,
    *,
    reply: str | None = None,
    prompt: str | None = None,
    closing: str,
    voice: str | None = None,
    language: str | None = None,
) -> bytes:
    """`[<Say>reply</Say>] <Gather input="speech" action…>[<Say>prompt</Say>]</Gather>
    <Say>closing</Say><Hangup/>`.

    The Gather posts what the caller said (SpeechResult) to `action`. A caller who says
    nothing: Twilio does not post (actionOnEmptyResult is false by default) and goes on with
    the next verb, so silence ends the call with the closing line. speechTimeout="auto": the
    caller's pause ends the turn, not a fixed count of seconds. `language` is the speech
    recognition's too: the caller is heard in the language they are spoken to in."""
    response = VoiceResponse()
    if reply is not None:
        _say(response, reply, voice, language)
    gather = Gather(input="speech", action=action, method="POST", speech_timeout="auto", language=language)
    if prompt is not None:
        _say(gather, prompt, voice, language)
    response.append(gather)
    _say(response, closing, voice, language)
    response.hangup()
    return str(response.to_xml()).encode()


def goodbye(*, reply: str | None = None, closing: str, voice: str | None = None, language: str | None = None) -> bytes:
    """`[<Say>reply</Say>] <Say>closing</Say><Hangup/>`: the last turn of a conversation."""
    response = VoiceResponse()
    if reply is not None:
        _say(response, reply, voice, language)
    _say(response, closing, voice, language)
    response.hangup()
    return str(response.to_xml()).encode()
