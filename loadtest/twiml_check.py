"""What checking a runtime's answer costs: the shape check the `upstream` action used before
(issue 17: a runtime's `Tom & Jerry` reached Twilio) against `twiml.check`'s expat parse, in the
same run, on the bench's own answer (~170 B) and on a ~2 KB menu.

    .venv/bin/python loadtest/twiml_check.py [--number 20000] [--repeat 7]

Each figure is the best of --repeat runs, in µs per answer (as steps.py). Nothing here starts a
server: the hop's own per-request figure comes from bench.py (`--targets bare,upstream`).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

from twilio.twiml.voice_response import Gather, VoiceResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

from gateway.protocol import twiml


def shape_check(body: bytes) -> bool:
    """The check before issue 17 (gateway/actions/upstream.py `is_twiml`), kept as the baseline."""
    text = body.strip()
    if text.startswith(b"<?xml"):
        end = text.find(b"?>")
        if end < 0:
            return False
        text = text[end + 2 :].lstrip()
    return (text.startswith((b"<Response>", b"<Response/>", b"<Response ")) and text.endswith(b">")) and (
        text.endswith(b"</Response>") or text.endswith(b"/>")
    )


def menu() -> bytes:
    """A ~2 KB answer: a speech-and-keys <Gather> of nineteen options, then a goodbye."""
    response = VoiceResponse()
    gather = Gather(
        input="speech dtmf", action="https://runtime.example/twilio/gather?step=2", method="POST",
        timeout=5, speech_timeout="auto", language="en-US", hints="appointment, billing, pharmacy",
    )  # fmt: skip
    for option in range(19):
        gather.say(f"For option {option}, say its name or press {option}: we will put you through.", voice="alice")
    response.append(gather)
    response.say("We did not hear anything. Goodbye.", voice="alice")
    response.redirect("https://runtime.example/twilio/voice?retry=1")
    return str(response.to_xml()).encode()


def rejected(document: bytes) -> Callable[[], object]:
    def check() -> object:
        try:
            twiml.check(document)
        except twiml.NotTwiml as problem:
            return problem
        raise AssertionError("the document was expected to fail")

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept")
    args = parser.parse_args(argv)
    small, large = scenario.say_twiml(), menu()
    for document in (small, large):
        twiml.check(document)
        assert shape_check(document)

    def best(step: Callable[[], object]) -> float:
        number: int = args.number
        return min(timeit.repeat(step, number=number, repeat=args.repeat)) / number * 1e6

    for name, document in (("bench answer", small), ("menu", large)):
        old, new = best(partial(shape_check, document)), best(partial(twiml.check, document))
        print(f"  {name} ({len(document)} B): shape check {old:6.2f} us, parse {new:6.2f} us (+{new - old:.2f})")
    for name, document in (
        ("HTML error page", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
        ("JSON", b'{"error": "database is down"}'),
        ("an ampersand, 2 KB", large.replace(b"put you", b"put you & me", 1)),
    ):
        print(f"  refused, {name}: {best(rejected(document)):6.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
