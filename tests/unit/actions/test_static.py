"""Static actions: each compiles from its schema to TwiML bytes at load; raw() checks operator TwiML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from gateway.actions import ACTIONS, CompileContext, static, stream
from gateway.protocol import twiml

DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'


def _parse(document: bytes) -> ET.Element:
    """The <Response> root of a rendered document, after checking the declaration."""
    assert document.startswith(DECLARATION), document
    root = ET.fromstring(document)
    assert root.tag == "Response"
    return root


def _compiled(name: str, value: object, public_url: str | None = None) -> bytes:
    """The reply bytes the registry's action `name` compiles `value` to, for tenant `acme`."""
    reply = ACTIONS[name].compile(value, CompileContext("acme", public_url)).reply
    assert reply is not None, "a static action compiles to bytes"
    return reply


def _verbs(root: ET.Element) -> list[str]:
    return [child.tag for child in root]


def test_say_with_attributes_then_hangup() -> None:
    """<Say> carries the text, voice and language, and is followed by <Hangup/>."""
    root = _parse(_compiled("say", static.Say(text="We are closed.", voice="Polly.Joanna", language="en-US")))
    assert _verbs(root) == ["Say", "Hangup"]
    say = root[0]
    assert say.text == "We are closed."
    assert say.attrib == {"voice": "Polly.Joanna", "language": "en-US"}


def test_say_without_optional_attributes_or_hangup() -> None:
    """Unset voice/language are omitted; hangup: false leaves <Say> alone."""
    root = _parse(_compiled("say", static.Say(text="Hold on.", hangup=False)))
    assert _verbs(root) == ["Say"]
    assert root[0].attrib == {}


def test_say_escapes_markup_in_text() -> None:
    """Text with < and & is escaped, not injected as TwiML."""
    root = _parse(_compiled("say", static.Say(text="A < B & <Hangup/>")))
    assert root[0].text == "A < B & <Hangup/>"
    assert _verbs(root) == ["Say", "Hangup"]


@pytest.mark.parametrize("reason", ["busy", "rejected"])
def test_reject_reason(reason: str) -> None:
    """<Reject> is the only verb and carries the reason."""
    root = _parse(_compiled("reject", static.Reject(reason=reason)))  # type: ignore[arg-type]
    assert _verbs(root) == ["Reject"]
    assert root[0].attrib == {"reason": reason}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_redirect_url_and_method(method: str) -> None:
    """<Redirect> holds the URL as text and the method as an attribute."""
    root = _parse(_compiled("redirect", static.Redirect(url="https://ivr.example.com/voice?a=1&b=2", method=method)))  # type: ignore[arg-type]
    assert _verbs(root) == ["Redirect"]
    assert root[0].text == "https://ivr.example.com/voice?a=1&b=2"
    assert root[0].attrib == {"method": method}


def test_message_text() -> None:
    """<Message> holds the reply text, escaped."""
    root = _parse(_compiled("message", static.Message(text="Soup & bread <today>")))
    assert _verbs(root) == ["Message"]
    assert root[0].text == "Soup & bread <today>"


def test_constants_are_the_documented_replies() -> None:
    """Not configured says so; EMPTY is bare; REJECT_BUSY rejects busy; VOICE_FALLBACK says sorry and hangs up."""
    not_configured = _parse(twiml.NOT_CONFIGURED)
    assert _verbs(not_configured) == ["Say"]
    assert not_configured[0].text == "This number is not configured."
    assert _verbs(_parse(twiml.EMPTY)) == []
    busy = _parse(twiml.REJECT_BUSY)
    assert _verbs(busy) == ["Reject"]
    assert busy[0].attrib == {"reason": "busy"}
    fallback = _parse(twiml.VOICE_FALLBACK)
    assert _verbs(fallback) == ["Say", "Hangup"]
    assert fallback[0].text == "Sorry, we cannot take your call right now. Please try again later."


def test_raw_adds_the_declaration() -> None:
    """Operator TwiML without a declaration gets the UTF-8 one, and is otherwise kept as written."""
    text = "<Response><Message>Thanks!</Message></Response>"
    assert twiml.raw(text) == DECLARATION + text.encode()


def test_raw_strips_surrounding_whitespace() -> None:
    """Leading and trailing whitespace (YAML block scalars) is dropped before the declaration."""
    assert twiml.raw("\n  <Response/>\n") == DECLARATION + b"<Response/>"


def test_raw_keeps_an_existing_declaration() -> None:
    """A document that already has a declaration is not given a second one."""
    text = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'
    assert twiml.raw(text) == text.encode()


def test_raw_encodes_utf8() -> None:
    """Non-ASCII text is encoded as UTF-8, matching the declaration."""
    root = _parse(twiml.raw("<Response><Say>Café</Say></Response>"))
    assert root[0].text == "Café"


def test_raw_declaration_matches_the_bytes() -> None:
    """A Latin-1 declaration in the policy does not make Twilio misread the UTF-8 bytes."""
    text = '<?xml version="1.0" encoding="ISO-8859-1"?><Response><Say>Café</Say></Response>'
    assert ET.fromstring(twiml.raw(text))[0].text == "Café"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("<Response><Say>Hi</Response>", "not well-formed TwiML: mismatched tag", id="mismatched"),
        pytest.param("Sorry!", "not well-formed TwiML: not well-formed (invalid token)", id="not-xml"),
        pytest.param("", "not well-formed TwiML: no element found", id="empty"),
        pytest.param("<Response/><Response/>", "not well-formed TwiML: junk after document element", id="two-roots"),
        pytest.param("<Say>Hi</Say>", "TwiML must have <Response> as its root, not <Say>", id="wrong-root"),
        pytest.param("<response/>", "TwiML must have <Response> as its root, not <response>", id="lower-case-root"),
        pytest.param('<!DOCTYPE r [<!ENTITY a "b">]><Response/>', "refused TwiML: a DOCTYPE", id="doctype"),
    ],
)
def test_raw_rejects_malformed_and_wrong_root(text: str, message: str) -> None:
    """raw() raises ValueError saying whether the XML is broken, has a DOCTYPE or its root is not <Response>."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        twiml.raw(text)


def test_every_static_action_compiles_to_bytes_only() -> None:
    """Each registered static action yields reply bytes and no call-out: nothing to await."""
    values: dict[str, object] = {
        "say": static.Say(text="hi"),
        "reject": static.Reject(),
        "redirect": static.Redirect(url="https://x.example/v"),
        "stream": stream.Stream(url="wss://x.example/s"),
        "message": static.Message(text="hi"),
        "twiml": "<Response/>",
    }
    assert set(values) <= set(ACTIONS)
    for name, value in values.items():
        compiled = ACTIONS[name].compile(value, CompileContext("acme"))
        assert compiled.call is None, name
        assert compiled.reply is not None
        assert compiled.reply.startswith(DECLARATION), name


def test_compile_context_gives_secrets_from_the_environment_only() -> None:
    """An action reads a secret by the variable its policy names; an unset one is a named error."""
    context = CompileContext("acme", env={"ACME_OPENAI_KEY": "sk-test"})
    assert context.secret("ACME_OPENAI_KEY") == b"sk-test"
    with pytest.raises(ValueError, match="ACME_MISSING is not set"):
        context.secret("ACME_MISSING")
    assert "sk-test" not in repr(context)
