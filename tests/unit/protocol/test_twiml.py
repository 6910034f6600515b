"""twiml.check: what a tenant's runtime answers reaches Twilio only as well-formed XML with a
<Response> root; anything else is refused with a short reason that quotes none of its text."""

from __future__ import annotations

import contextlib
import gc

import pytest

from gateway.protocol import twiml

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
BOM = b"\xef\xbb\xbf"
# A billion laughs: ten levels of ten, 10^9 "lol"s if the entities were ever expanded.
LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE Response [<!ENTITY lol0 "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (n, b"&lol%d;" % (n - 1) * 10) for n in range(1, 10))
    + b"]><Response><Say>&lol9;</Say></Response>"
)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"<Response/>", id="self-closing-root"),
        pytest.param(b"<Response />", id="self-closing-root-with-space"),
        pytest.param(b"<Response></Response>", id="empty-root"),
        pytest.param(DECLARATION + b"<Response><Say>Hello.</Say></Response>", id="declaration"),
        pytest.param(BOM + DECLARATION + b"<Response><Say>Caf\xc3\xa9</Say></Response>", id="bom-and-declaration"),
        pytest.param(BOM + b"<Response/>", id="bom-alone"),
        pytest.param(
            b'<Response><Gather input="speech dtmf" action="/next?step=2&amp;try=1" timeout=\'5\'>'
            b'<Say voice="Polly.Joanna" language="en-US">Press 1.</Say></Gather></Response>',
            id="attributes",
        ),
        pytest.param(b'<Response xmlns="https://www.twilio.com/docs/api/twiml"/>', id="default-namespace"),
        pytest.param(
            b'<Response xmlns:x="urn:example:x"><x:Note x:id="1"/><Say>Hi</Say></Response>', id="bound-prefix"
        ),
        pytest.param(
            DECLARATION + b"\n<Response>\n  <Say>Hello.</Say>\n  <Hangup />\n</Response>\n", id="pretty-printed"
        ),
        pytest.param(b" \n\t<Response/>\r\n ", id="whitespace-around-root-no-declaration"),
        pytest.param(b"<!-- made by the runtime --><Response/><!-- done -->\n", id="comments-around-root"),
        pytest.param(b"<Response><Say>Tom &amp; Jerry &#233; &#x263A; &lt;3</Say></Response>", id="escapes"),
        pytest.param(b"<Response><Say><![CDATA[Tom & Jerry <3]]></Say></Response>", id="cdata"),
        pytest.param(
            b'<?xml version="1.0" encoding="ISO-8859-1"?><Response><Say>Caf\xe9</Say></Response>', id="latin-1"
        ),
        pytest.param(twiml.say("Goodbye.", voice="alice"), id="twilio-rendered-say"),
        pytest.param(twiml.stream("wss://rt.example/s", {"agent": "triage"}), id="twilio-rendered-stream"),
        pytest.param(twiml.NOT_CONFIGURED, id="not-configured"),
        pytest.param(twiml.EMPTY, id="empty-response"),
        pytest.param(twiml.REJECT_BUSY, id="reject"),
        pytest.param(twiml.VOICE_FALLBACK, id="voice-fallback"),
    ],
)
def test_well_formed_twiml_passes(document: bytes) -> None:
    """Well-formed documents with a <Response> root pass, whatever their attributes, namespaces,
    BOM, declaration, comments or whitespace."""
    twiml.check(document)


@pytest.mark.parametrize(
    ("document", "kind", "reason"),
    [
        pytest.param(
            b"<Response><Say>Tom & Jerry</Say></Response>",
            "malformed",
            "not well-formed (invalid token): line 1, column 20",
            id="ampersand",
        ),
        pytest.param(
            b"<Response><Say>Hello</Response>", "malformed", "mismatched tag: line 1, column 22", id="unclosed"
        ),
        pytest.param(b"<Response><Say>Hello", "malformed", "no element found: line 1, column 20", id="cut-short"),
        pytest.param(
            b"<Response/><Response/>", "malformed", "junk after document element: line 1, column 11", id="two-roots"
        ),
        pytest.param(
            b"<Response></Response>thanks", "malformed", "junk after document element: line 1, column 21", id="trailing"
        ),
        pytest.param(b"<Response><Say>&nbsp;</Say></Response>", "malformed", "undefined entity", id="html-entity"),
        pytest.param(b"<Response><x:Say/></Response>", "malformed", "unbound prefix", id="unbound-prefix"),
        pytest.param(LAUGHS, "doctype", "a DOCTYPE", id="billion-laughs"),
        pytest.param(
            b'<!DOCTYPE Response SYSTEM "file:///etc/passwd"><Response/>', "doctype", "a DOCTYPE", id="system"
        ),
        pytest.param(
            b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
            "doctype",
            "a DOCTYPE",
            id="html-page-with-doctype",
        ),
        pytest.param(
            b"<html><body><h1>Internal Server Error</h1></body></html>",
            "root",
            "the root is <html>, not <Response>",
            id="html-page",
        ),
        pytest.param(
            b'{"error": "database is down"}',
            "malformed",
            "not well-formed (invalid token): line 1, column 0",
            id="json",
        ),
        pytest.param(b"Internal Server Error", "malformed", "syntax error: line 1, column 0", id="plain-text"),
        pytest.param(b"", "malformed", "no element found: line 1, column 0", id="empty"),
        pytest.param(b" \r\n", "malformed", "no element found", id="whitespace-only"),
        pytest.param(
            b"\n" + DECLARATION + b"<Response/>",
            "malformed",
            "XML or text declaration not at start of entity: line 2, column 0",
            id="blank-line-before-declaration",
        ),
        pytest.param(b"<Say>Hi</Say>", "root", "the root is <Say>, not <Response>", id="a-verb-as-root"),
        pytest.param(b"<response/>", "root", "the root is <response>, not <Response>", id="lower-case-root"),
        pytest.param(
            b'<t:Response xmlns:t="urn:t"/>', "root", "the root is <t:Response>, not <Response>", id="prefixed-root"
        ),
        pytest.param(
            b'<?xml version="1.0" encoding="UTF-16"?><Response/>', "malformed", "encoding", id="declared-utf16-is-utf8"
        ),
    ],
)
def test_anything_else_is_refused_with_its_reason(document: bytes, kind: str, reason: str) -> None:
    """Broken XML, a DOCTYPE, another root, an error page, JSON, nothing: NotTwiml says which, briefly."""
    with pytest.raises(twiml.NotTwiml) as refused:
        twiml.check(document)
    assert refused.value.kind == kind
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"<Response><Say>Your code is 4151 & your name is Ada.</Say></Response>", id="malformed"),
        pytest.param(b"<Response><Say>Your code is 4151, Ada.</Say></Respons>", id="mismatched"),
        pytest.param(b'<!DOCTYPE x [<!ENTITY n "Ada 4151">]><Response>&n;</Response>', id="doctype"),
        pytest.param(b"<Message>Your code is 4151, Ada.</Message>", id="root"),
        pytest.param(b"Your code is 4151, Ada.", id="text"),
    ],
)
def test_the_reason_quotes_none_of_the_document(document: bytes) -> None:
    """What a caller said or is told (here a name and a code) never reaches the reason."""
    with pytest.raises(twiml.NotTwiml) as refused:
        twiml.check(document)
    message = str(refused.value)
    assert "4151" not in message and "Ada" not in message


def test_a_long_root_name_is_cut() -> None:
    """The one name the reason quotes, the root's, is bounded."""
    with pytest.raises(twiml.NotTwiml) as refused:
        twiml.check(b"<" + b"R" * 10_000 + b"/>")
    assert len(str(refused.value)) < 100 and refused.value.root == "R" * twiml.MAX_NAME


def test_text_is_checked_as_text_whatever_its_declaration_says() -> None:
    """A str (operator TwiML from YAML) is read as the text it is, not in its declared encoding."""
    twiml.check('<?xml version="1.0" encoding="ISO-8859-1"?><Response><Say>Café</Say></Response>')


def test_checking_leaves_no_garbage_for_the_collector() -> None:
    """Accepted or refused (before the root, at it, after it), a check frees all it made by
    reference counting: no parser and handler kept alive by each other."""
    documents = [b"<Response/>", b"{}", b"", b"<html/>", b"<!DOCTYPE r><Response/>", b"<Response>&</Response>"]
    gc.collect()
    gc.disable()
    try:
        for document in documents:
            with contextlib.suppress(twiml.NotTwiml):
                twiml.check(document)
        assert gc.collect() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "text",
    ["Hello.", "Café & <co> \"quoted\" 'single'", "東京 ☎ \u00a0tab\there", "]]> &amp; &#x41;"],
)
def test_rendered_twiml_is_byte_for_byte_what_twilio_renders(text: str) -> None:
    """Our faster serialisation gives exactly the bytes of twilio's own to_xml(), escapes and all."""
    from twilio.twiml.messaging_response import MessagingResponse
    from twilio.twiml.voice_response import VoiceResponse

    voice = VoiceResponse()
    voice.say(text, voice="Polly.Joanna", language="en-US")
    voice.hangup()
    assert twiml.say(text, voice="Polly.Joanna", language="en-US") == voice.to_xml().encode()
    sms = MessagingResponse()
    sms.message(text)
    assert twiml.message(text) == sms.to_xml().encode()
    stream = VoiceResponse()
    connect = stream.connect()
    connect.stream(url="wss://gw.example.com/s?a=1&b=2", name=text).parameter(name="k", value=text)
    assert twiml.stream("wss://gw.example.com/s?a=1&b=2", {"k": text}, name=text) == stream.to_xml().encode()
