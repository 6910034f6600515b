"""Media Streams, sans-io: order and stream checks, the meter, the start rewrite, the fast path
against the full parse, and the builders' shapes. Every `now` is passed in; nothing sleeps."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from collections.abc import Callable

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.protocol import media
from gateway.protocol.media import (
    LATENCY_SAMPLE,
    MAX_MARK_NAME,
    MAX_MESSAGE,
    MAX_OUTSTANDING_MARKS,
    Latency,
    MediaError,
    MediaFormat,
    Meter,
    Start,
    StreamSession,
    clear_message,
    connected_message,
    dtmf_message,
    event_of,
    mark_message,
    media_message,
    parse_start,
    start_message,
    stop_message,
    twilio_mark_message,
    twilio_media_message,
    with_parameters,
)
from gateway.telemetry.cost import billed_minutes
from tests.support.fuzz import FUZZ, bounded, odd_text
from tests.support.twilio import ACME_SID

STREAM = "MZ" + "5f" * 16
OTHER = "MZ" + "6e" * 16
CALL = "CA" + "a" * 32
ACCOUNT = ACME_SID
FRAME = bytes(range(160))  # 20 ms of μ-law; 160 bytes encode with "==" padding
AUDIO = base64.b64encode(FRAME).decode()


def started(now: float = 0.0, **parameters: str) -> StreamSession:
    """A session that has seen Twilio's connected and start."""
    session = StreamSession(now)
    session.from_twilio(connected_message(), now)
    session.from_twilio(start_message(STREAM, CALL, ACCOUNT, parameters), now)
    return session


def _state(session: StreamSession) -> str:
    """The state, read through a call (mypy would narrow a property compared twice)."""
    return session.state


def frame(seq: int, timestamp_ms: int, payload: str = AUDIO, sid: str = STREAM) -> str:
    return twilio_media_message(sid, seq, seq - 1, timestamp_ms, payload)


def test_whole_session_meters_exactly() -> None:
    """A call of recorded shape (connected, start, 500 frames 20 ms apart, a digit, runtime
    audio, a mark and its echo, a clear and the next frame, stop) meters every figure exactly."""
    session = StreamSession(999.5, extra_parameters={"tenant": "acme"})
    assert _state(session) == "awaiting_start"
    connected = connected_message()
    assert session.from_twilio(connected, 999.6) == ("connected", None, connected)
    inbound = session.from_twilio(start_message(STREAM, CALL, ACCOUNT, {"agent": "triage"}), 999.7)
    assert inbound.event == "start" and inbound.start is not None and inbound.start.stream_sid == STREAM
    assert _state(session) == "streaming"

    seq = 2
    for i in range(500):
        now = 1000 + i / 50
        text = frame(seq, i * 20)
        seq += 1
        assert session.from_twilio(text, now) == ("media", None, text)
        if i == 100:
            digit = dtmf_message(STREAM, seq, "7")
            seq += 1
            assert session.from_twilio(digit, now + 0.001).event == "dtmf"
        if i == 200:
            for _ in range(3):
                out = media_message(STREAM, AUDIO)
                assert session.from_runtime(out, now + 0.001) == ("media", out)
            assert session.from_runtime(mark_message(STREAM, "reply-1"), now + 0.002).event == "mark"
        if i == 215:
            assert session.from_twilio(twilio_mark_message(STREAM, seq, "reply-1"), now + 0.001).event == "mark"
            seq += 1
        if i == 300:
            assert session.from_runtime(clear_message(STREAM), now + 0.005).event == "clear"
    assert session.from_twilio(stop_message(STREAM, seq, CALL, ACCOUNT), 1010.0).event == "stop"
    assert _state(session) == "stopped"

    meter = session.meter()
    # Latencies from `now` values 20 ms apart are inexact in binary: compared apart, approximately.
    rtt, barge_in = meter.mark_round_trip, meter.barge_in
    assert rtt.count == 1 and rtt.p50 == pytest.approx(0.299) and rtt.max == rtt.p50
    assert barge_in.count == 1 and barge_in.p50 == pytest.approx(0.015) and barge_in.max == barge_in.p50
    assert dataclasses.replace(meter, mark_round_trip=Latency(), barge_in=Latency()) == Meter(
        inbound_frames=500,
        inbound_bytes=500 * 160,
        outbound_frames=3,
        outbound_bytes=3 * 160,
        dtmf=1,
        marks_sent=1,
        marks_echoed=1,
        media_ms=10_000,
        started_at=999.7,
        stopped_at=1010.0,
        last_at=1010.0,
    )
    assert meter.seconds == 10.0
    assert meter.minutes() == 1
    assert meter.minutes(started_minute=False) == pytest.approx(1 / 6)


def test_start_is_rewritten_with_the_extra_parameters_and_nothing_else() -> None:
    """With extra_parameters, start goes on with them in customParameters (ours win over
    Twilio's of the same name); every other field keeps its value and its place."""
    text = start_message(STREAM, CALL, ACCOUNT, {"agent": "triage", "tenant": "forged"})
    session = StreamSession(0.0, extra_parameters={"tenant": "acme"})
    inbound = session.from_twilio(text, 0.0)

    sent, original = orjson.loads(inbound.forward), orjson.loads(text)
    assert sent["start"]["customParameters"] == {"agent": "triage", "tenant": "acme"}
    assert list(sent) == list(original) and list(sent["start"]) == list(original["start"])
    del sent["start"]["customParameters"], original["start"]["customParameters"]
    assert sent == original
    # The Start value is what Twilio sent.
    assert inbound.start is not None and inbound.start.custom_parameters == {"agent": "triage", "tenant": "forged"}


def test_with_parameters_adds_custom_parameters_when_twilio_sent_none() -> None:
    """A start without customParameters gets the object, at the end of start."""
    obj = orjson.loads(start_message(STREAM, CALL, ACCOUNT))
    del obj["start"]["customParameters"]
    rewritten = orjson.loads(with_parameters(json.dumps(obj, indent=2), {"tenant": "acme"}))
    assert rewritten["start"]["customParameters"] == {"tenant": "acme"}
    assert list(rewritten["start"])[-1] == "customParameters"


def test_with_parameters_refuses_what_is_not_a_good_start() -> None:
    """Only a start of Twilio's shape is re-encoded."""
    with pytest.raises(MediaError) as caught:
        with_parameters(frame(2, 0), {"tenant": "acme"})
    assert caught.value.reason == "bad_start"


def test_start_goes_on_unchanged_without_extra_parameters() -> None:
    """Without extra_parameters the start frame itself is forwarded."""
    text = start_message(STREAM, CALL, ACCOUNT, {"agent": "triage"})
    assert StreamSession(0.0).from_twilio(text, 0.0).forward is text


def test_parse_start_reads_twilio_documented_example() -> None:
    """The start of Twilio's docs parses to its values, start first without connected."""
    text = start_message(STREAM, CALL, ACCOUNT, {"FirstName": "Jane", "LastName": "Doe"}, tracks=("inbound",))
    assert parse_start(orjson.loads(text)) == Start(
        stream_sid=STREAM,
        call_sid=CALL,
        account_sid=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"FirstName": "Jane", "LastName": "Doe"},
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
    )
    assert StreamSession(0.0).from_twilio(text, 0.0).event == "start"


def _start_with(change: Callable[[dict[str, object]], object]) -> str:
    obj = orjson.loads(start_message(STREAM, CALL, ACCOUNT, {"agent": "triage"}))
    change(obj)
    return orjson.dumps(obj).decode()


def _set(path: str, value: object) -> Callable[[dict[str, object]], object]:
    def change(obj: dict[str, object]) -> None:
        *outer, last = path.split(".")
        target = obj
        for key in outer:
            target = target[key]  # type: ignore[assignment]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return change


_DELETE = object()
BIG = '{"event":"dtmf","streamSid":"' + STREAM + '","pad":"' + "x" * MAX_MESSAGE + '"}'
# Under MAX_MESSAGE characters, over it in UTF-8 bytes (3 a euro sign).
BIG_IN_BYTES = '{"event":"dtmf","streamSid":"' + STREAM + '","pad":"' + "€" * 22_000 + '"}'

BAD_STARTS = [
    pytest.param(_set("start.streamSid", "MZ123"), id="short-stream-sid"),
    pytest.param(_set("start.streamSid", "CA" + "5f" * 16), id="stream-sid-prefix"),
    pytest.param(_set("start.callSid", "CA" + "g" * 32), id="call-sid-not-hex"),
    pytest.param(_set("start.accountSid", None), id="no-account-sid"),
    pytest.param(_set("streamSid", OTHER), id="two-stream-sids"),
    pytest.param(_set("start", []), id="start-not-object"),
    pytest.param(_set("start.tracks", []), id="no-tracks"),
    pytest.param(_set("start.tracks", "inbound"), id="tracks-not-list"),
    pytest.param(_set("start.tracks", [1]), id="track-not-string"),
    pytest.param(_set("start.customParameters", {"agent": 1}), id="parameter-not-string"),
    pytest.param(_set("start.customParameters", {"": "x"}), id="parameter-no-name"),
    pytest.param(_set("start.customParameters", ["agent"]), id="parameters-not-object"),
    pytest.param(_set("start.mediaFormat", _DELETE), id="no-media-format"),
    pytest.param(_set("start.mediaFormat.sampleRate", True), id="sample-rate-bool"),
    pytest.param(_set("start.mediaFormat.channels", 0), id="no-channels"),
    pytest.param(_set("start.mediaFormat.encoding", ""), id="no-encoding"),
]


@pytest.mark.parametrize("change", BAD_STARTS)
def test_bad_start_is_refused(change: Callable[[dict[str, object]], object]) -> None:
    """A start whose SIDs, tracks, parameters or media format are not Twilio's shape is
    bad_start, and the session still awaits a good one."""
    session = StreamSession(0.0)
    with pytest.raises(MediaError) as caught:
        session.from_twilio(_start_with(change), 0.0)
    assert caught.value.reason == "bad_start"
    assert _state(session) == "awaiting_start" and session.start is None
    session.from_twilio(start_message(STREAM, CALL, ACCOUNT), 0.1)
    assert _state(session) == "streaming"


def _in_state(state: str) -> StreamSession:
    session = StreamSession(0.0)
    if state in ("connected", "streaming", "stopped"):
        session.from_twilio(connected_message(), 0.0)
    if state in ("streaming", "stopped"):
        session.from_twilio(start_message(STREAM, CALL, ACCOUNT), 0.0)
        session.from_twilio(frame(2, 0), 0.02)  # so later frames may take the fast path
    if state == "stopped":
        session.from_twilio(stop_message(STREAM, 3, CALL, ACCOUNT), 0.04)
    return session


REFUSED = [
    # From Twilio.
    pytest.param("twilio", "streaming", BIG, "too_large", id="twilio-too-large"),
    pytest.param("twilio", "streaming", BIG_IN_BYTES, "too_large", id="twilio-too-large-in-bytes"),
    pytest.param("twilio", "streaming", frame(3, 20)[:-1], "not_json", id="twilio-truncated-media"),
    pytest.param("twilio", "new", "", "not_json", id="twilio-empty"),
    pytest.param("twilio", "new", '{"event": NaN}', "not_json", id="twilio-nan"),
    pytest.param("twilio", "new", "[]", "not_object", id="twilio-array"),
    pytest.param("twilio", "streaming", '"media"', "not_object", id="twilio-string"),
    pytest.param("twilio", "new", "{}", "no_event", id="twilio-no-event"),
    pytest.param("twilio", "new", '{"event": 1}', "no_event", id="twilio-event-number"),
    pytest.param("twilio", "new", '{"event": ""}', "no_event", id="twilio-event-empty"),
    pytest.param("twilio", "new", '{"event": "' + "x" * 33 + '"}', "no_event", id="twilio-event-long"),
    pytest.param("twilio", "new", frame(2, 0), "out_of_order", id="media-before-start"),
    pytest.param("twilio", "connected", dtmf_message(STREAM, 2, "1"), "out_of_order", id="dtmf-before-start"),
    pytest.param("twilio", "new", stop_message(STREAM, 2, CALL, ACCOUNT), "out_of_order", id="stop-before-start"),
    pytest.param("twilio", "connected", connected_message(), "out_of_order", id="connected-twice"),
    pytest.param("twilio", "streaming", connected_message(), "out_of_order", id="connected-after-start"),
    pytest.param("twilio", "streaming", start_message(STREAM, CALL, ACCOUNT), "out_of_order", id="start-twice"),
    pytest.param("twilio", "stopped", frame(4, 40), "out_of_order", id="media-after-stop"),
    pytest.param("twilio", "stopped", stop_message(STREAM, 4, CALL, ACCOUNT), "out_of_order", id="stop-twice"),
    pytest.param("twilio", "streaming", frame(3, 20, sid=OTHER), "wrong_stream", id="twilio-media-other-stream"),
    pytest.param("twilio", "streaming", '{"event":"dtmf","dtmf":{"digit":"1"}}', "wrong_stream", id="dtmf-no-sid"),
    pytest.param("twilio", "streaming", twilio_mark_message(OTHER, 3, "x"), "wrong_stream", id="mark-other-stream"),
    pytest.param("twilio", "streaming", stop_message(OTHER, 3, CALL, ACCOUNT), "wrong_stream", id="stop-other-stream"),
    pytest.param(
        "twilio",
        "streaming",
        '{"event":"media","media":{"payload":1},"streamSid":"' + STREAM + '"}',
        "bad_message",
        id="payload-not-string",
    ),
    pytest.param("twilio", "streaming", '{"event":"media","streamSid":"' + STREAM + '"}', "bad_message", id="no-media"),
    pytest.param(
        "twilio", "streaming", '{"event":"mark","streamSid":"' + STREAM + '"}', "bad_message", id="echo-no-name"
    ),
    # From the runtime.
    pytest.param("runtime", "streaming", BIG, "too_large", id="runtime-too-large"),
    pytest.param("runtime", "streaming", "{", "not_json", id="runtime-not-json"),
    pytest.param("runtime", "streaming", "null", "not_object", id="runtime-null"),
    pytest.param("runtime", "streaming", '{"streamSid": "x"}', "no_event", id="runtime-no-event"),
    pytest.param("runtime", "streaming", start_message(STREAM, CALL, ACCOUNT), "unknown_event", id="runtime-start"),
    pytest.param("runtime", "streaming", stop_message(STREAM, 9, CALL, ACCOUNT), "unknown_event", id="runtime-stop"),
    pytest.param("runtime", "streaming", dtmf_message(STREAM, 9, "1"), "unknown_event", id="runtime-dtmf"),
    pytest.param("runtime", "new", media_message(STREAM, AUDIO), "out_of_order", id="runtime-media-before-start"),
    pytest.param("runtime", "connected", mark_message(STREAM, "x"), "out_of_order", id="runtime-mark-before-start"),
    pytest.param("runtime", "stopped", clear_message(STREAM), "out_of_order", id="runtime-clear-after-stop"),
    pytest.param("runtime", "streaming", media_message(OTHER, AUDIO), "wrong_stream", id="runtime-other-stream"),
    pytest.param("runtime", "streaming", '{"event":"clear"}', "wrong_stream", id="runtime-no-sid"),
    pytest.param(
        "runtime",
        "streaming",
        '{"event":"media","streamSid":"' + STREAM + '","media":{}}',
        "bad_message",
        id="runtime-no-payload",
    ),
    pytest.param(
        "runtime",
        "streaming",
        '{"event":"mark","streamSid":"' + STREAM + '","mark":{"name":["x"]}}',
        "bad_message",
        id="runtime-mark-name-not-string",
    ),
]


@pytest.mark.parametrize(("side", "state", "text", "reason"), REFUSED)
def test_refused_frames_name_their_reason_and_change_nothing(side: str, state: str, text: str, reason: str) -> None:
    """Each refusal raises MediaError with its reason, and leaves the state and meter as they were."""
    session = _in_state(state)
    before, state_before = session.meter(), session.state
    receive: Callable[[str, float], object] = session.from_twilio if side == "twilio" else session.from_runtime
    with pytest.raises(MediaError) as caught:
        receive(text, 5.0)
    assert caught.value.reason == reason
    assert session.meter() == before and session.state == state_before


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"event": "media", "caller": "+15557654321 SECRET"', id="not-json"),
        pytest.param('["+15557654321 SECRET"]', id="not-object"),
    ],
)
def test_error_carries_no_message_text(text: str) -> None:
    """A MediaError holds its reason only: not the text, not the parse error that quotes it."""
    with pytest.raises(MediaError) as caught:
        event_of(text)
    error = caught.value
    assert error.args == (error.reason,) and str(error) == error.reason
    assert "SECRET" not in repr(error)
    assert error.__context__ is None and error.__cause__ is None


def test_twilio_events_added_later_are_forwarded_after_start() -> None:
    """An event this module does not know goes on to the runtime once streaming, unmetered."""
    session = _in_state("streaming")
    before = session.meter()
    text = '{"event":"transcription","sequenceNumber":"3","streamSid":"' + STREAM + '"}'
    assert session.from_twilio(text, 1.0) == ("transcription", None, text)
    after = session.meter()
    assert after == dataclasses.replace(before, last_at=1.0)


def test_start_may_come_without_connected() -> None:
    """Twilio sends connected first, but a start alone opens the stream too."""
    session = StreamSession(0.0)
    session.from_twilio(start_message(STREAM, CALL, ACCOUNT), 0.5)
    assert session.state == "streaming" and session.meter().started_at == 0.5


# The fast path against the full parse.

sequence_numbers = st.integers(min_value=1, max_value=10**9)
names = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
payloads = st.binary(max_size=400).map(lambda raw: base64.b64encode(raw).decode())
compact_frames = st.one_of(
    st.builds(
        twilio_media_message,
        st.just(STREAM),
        sequence_numbers,
        sequence_numbers,
        st.integers(min_value=0, max_value=10**8),
        payloads,
        st.sampled_from(["inbound", "outbound"]),
    ),
    st.builds(dtmf_message, st.just(STREAM), sequence_numbers, st.sampled_from("0123456789*#")),
    st.builds(twilio_mark_message, st.just(STREAM), sequence_numbers, names),
    st.builds(stop_message, st.just(STREAM), sequence_numbers, st.just(CALL), st.just(ACCOUNT)),
    st.builds(
        start_message, st.just(STREAM), st.just(CALL), st.just(ACCOUNT), st.dictionaries(names.filter(bool), names)
    ),
    st.just(connected_message()),
    st.builds(media_message, st.just(STREAM), payloads),
    st.builds(mark_message, st.just(STREAM), names),
    st.just(clear_message(STREAM)),
)


def _respelled(text: str, how: str) -> str:
    """The same message in another spelling: spaced, keys sorted, or ASCII-escaped."""
    obj = orjson.loads(text)
    if how == "spaced":
        return json.dumps(obj)
    if how == "sorted":
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return json.dumps(obj, indent=1, ensure_ascii=True)


@settings(max_examples=300, deadline=None)
@given(compact_frames, st.sampled_from(["compact", "spaced", "sorted", "escaped"]))
def test_event_of_agrees_with_the_full_parse(text: str, how: str) -> None:
    """event_of names every message, in any spelling, as a full parse does."""
    if how != "compact":
        text = _respelled(text, how)
    assert event_of(text) == orjson.loads(text)["event"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.integers(min_value=0, max_value=200)), min_size=1, max_size=30),
    st.integers(min_value=0, max_value=29),
)
def test_fast_path_meters_as_the_full_parse(frames: list[tuple[bytes, int]], clear_before: int) -> None:
    """Frames in Twilio's compact form (the fast path) and the same frames spaced out (parsed)
    give the same meter: bytes with any padding, timestamps, barge-in."""
    fast, parsed = started(), started()
    timestamp = 0
    for i, (raw, gap) in enumerate(frames):
        timestamp += gap
        text = frame(i + 2, timestamp, base64.b64encode(raw).decode())
        if i == clear_before:
            for session in (fast, parsed):
                session.from_runtime(clear_message(STREAM), i + 0.5)
        assert fast.from_twilio(text, i + 1.0).forward is text
        spaced = json.dumps(orjson.loads(text))
        assert parsed.from_twilio(spaced, i + 1.0).forward is spaced
    assert fast.meter() == parsed.meter()
    assert fast.meter().inbound_bytes == sum(len(raw) for raw, _ in frames)


def test_media_frames_after_the_first_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the first frame is read, Twilio's compact media frames of this stream skip the
    parser; any other spelling still goes through it."""
    session = _in_state("streaming")

    def no_parse(text: str) -> dict[str, object]:
        raise AssertionError("parsed")

    monkeypatch.setattr(media, "_load", no_parse)
    for seq in range(3, 53):
        session.from_twilio(frame(seq, (seq - 2) * 20), seq / 50)
    assert session.meter().inbound_frames == 51 and session.meter().media_ms == 51 * 20
    with pytest.raises(AssertionError, match="parsed"):
        session.from_twilio(json.dumps(orjson.loads(frame(53, 1020))), 2.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=20))
def test_runtime_fast_path_meters_as_the_full_parse(payloads: list[bytes]) -> None:
    """A runtime's media frames in the compact form (checked without a parse) and the same
    frames spaced out (parsed) give the same meter, padding and empty payloads included."""
    fast, parsed = started(), started()
    for i, raw in enumerate(payloads):
        text = media_message(STREAM, base64.b64encode(raw).decode())
        spaced = json.dumps(orjson.loads(text))
        assert fast.from_runtime(text, i + 1.0) == ("media", text)
        assert parsed.from_runtime(spaced, i + 1.0) == ("media", spaced)
    assert fast.meter() == parsed.meter()
    assert fast.meter().outbound_bytes == sum(len(raw) for raw in payloads)


def test_runtime_media_frames_are_not_parsed_in_the_compact_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compact form of this stream's media skips the parser; another spelling does not."""
    session = started()
    monkeypatch.setattr(media, "_load", lambda text: (_ for _ in ()).throw(AssertionError("parsed")))
    for _ in range(5):
        session.from_runtime(media_message(STREAM, AUDIO), 1.0)
    assert session.meter().outbound_frames == 5
    with pytest.raises(AssertionError, match="parsed"):
        session.from_runtime(json.dumps(orjson.loads(media_message(STREAM, AUDIO))), 2.0)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(media_message(STREAM, "QUJD\x01w=="), id="control-character"),
        pytest.param(media_message(STREAM, "QUJD").replace("QUJD", 'QU","x":"JD'), id="quote-in-payload"),
        pytest.param(media_message(STREAM, "QUJD") + " ", id="trailing-text"),
        pytest.param(media_message(STREAM, "QUJD")[:-1] + ',"x":1}', id="another-key"),
        pytest.param(media_message(OTHER, "QUJD"), id="another-stream"),
        pytest.param(media_message(STREAM, "QUJD").replace("QUJD", r"QU\u00e9JD"), id="escape"),
        pytest.param(media_message(STREAM, "QUJD").replace("QUJD", "QUéJD"), id="not-ascii"),
    ],
)
def test_runtime_frames_that_only_look_compact_are_checked_in_full(text: str) -> None:
    """Anything but the exact compact shape goes through the full parse, and is judged by it:
    a frame the parse refuses is refused, one it accepts is metered as parsed."""
    fast = started()
    try:
        expected: object = _parsed_runtime(text)
    except MediaError as error:
        expected = error.reason
    try:
        got: object = fast.from_runtime(text, 1.0)
    except MediaError as error:
        got = error.reason
    assert got == expected


def _parsed_runtime(text: str) -> object:
    """What the full parse makes of a runtime frame (the fast path kept out)."""
    session = started()
    session._out_head = "\x00"  # the fast path never matches
    return session.from_runtime(text, 1.0)


def test_runtime_media_before_start_is_refused_on_either_path() -> None:
    """A compact media frame before `start` is out of order, as a parsed one is."""
    session = StreamSession(0.0)
    with pytest.raises(MediaError, match="out_of_order"):
        session.from_runtime(media_message(STREAM, AUDIO), 0.0)


def test_event_of_names_a_media_frame_by_its_prefix_alone() -> None:
    """The fast path trusts Twilio's framing: a text with the media prefix is not parsed."""
    assert event_of('{"event":"media",not json') == "media"
    assert event_of(frame(2, 0)) == "media"


@pytest.mark.parametrize(
    ("media_body", "size"),
    [
        pytest.param({"payload": AUDIO, "track": "inbound", "timestamp": "20"}, 160, id="payload-not-last"),
        pytest.param({"track": "inbound", "timestamp": "20", "payload": "QUJD\\/w=="}, 4, id="escaped-slash"),
        pytest.param({"track": "inbound", "timestamp": "20", "payload": "QUI="}, 2, id="one-pad"),
        pytest.param({"track": "inbound", "timestamp": "20", "payload": "QUJD"}, 3, id="no-pad"),
        pytest.param({"track": "inbound", "timestamp": "20", "payload": ""}, 0, id="empty"),
    ],
)
def test_frames_off_twilio_usual_form_meter_as_parsed(media_body: dict[str, str], size: int) -> None:
    """A frame whose payload is not last, or holds an escape, is parsed rather than misread by
    the fast path; padding counts right either way."""
    session = _in_state("streaming")
    body = ",".join(f'"{key}":"{value}"' for key, value in media_body.items())
    text = '{"event":"media","sequenceNumber":"3","media":{' + body + '},"streamSid":"' + STREAM + '"}'
    before = session.meter().inbound_bytes
    assert session.from_twilio(text, 1.0).forward is text
    assert session.meter().inbound_bytes - before == size


# Marks, clears and latencies.


def test_outstanding_marks_are_bounded_and_the_oldest_dropped() -> None:
    """Past MAX_OUTSTANDING_MARKS the oldest mark is forgotten: its late echo is counted but
    makes no round trip; a remembered one still does."""
    session = _in_state("streaming")
    for i in range(MAX_OUTSTANDING_MARKS + 5):
        session.from_runtime(mark_message(STREAM, f"m{i}"), 1.0)
    assert session.outstanding_marks == MAX_OUTSTANDING_MARKS
    session.from_twilio(twilio_mark_message(STREAM, 3, "m0"), 2.0)
    meter = session.meter()
    assert meter.marks_sent == MAX_OUTSTANDING_MARKS + 5 and meter.marks_echoed == 1
    assert meter.mark_round_trip == Latency()
    session.from_twilio(twilio_mark_message(STREAM, 4, "m5"), 3.0)
    assert session.meter().mark_round_trip == Latency(1, 2.0, 2.0)
    assert session.outstanding_marks == MAX_OUTSTANDING_MARKS - 1


def test_a_reused_mark_name_pairs_its_echoes_in_order() -> None:
    """Runtimes often send one name for every reply: each echo pairs with the oldest send."""
    session = _in_state("streaming")
    session.from_runtime(mark_message(STREAM, "done"), 1.0)
    session.from_runtime(mark_message(STREAM, "done"), 2.0)
    session.from_twilio(twilio_mark_message(STREAM, 3, "done"), 1.5)
    session.from_twilio(twilio_mark_message(STREAM, 4, "done"), 2.25)
    assert session.meter().mark_round_trip == Latency(2, 0.25, 0.5)
    assert session.outstanding_marks == 0


def test_an_echo_past_an_unechoed_mark_gives_that_mark_up() -> None:
    """Twilio echoes in order, so marks sent before an echoed one and not echoed are dropped."""
    session = _in_state("streaming")
    for i, name in enumerate(["a", "b", "c"]):
        session.from_runtime(mark_message(STREAM, name), 1.0 + i)
    session.from_twilio(twilio_mark_message(STREAM, 3, "b"), 4.0)
    assert session.outstanding_marks == 1
    session.from_twilio(twilio_mark_message(STREAM, 4, "a"), 5.0)
    assert session.meter().mark_round_trip == Latency(1, 2.0, 2.0)
    assert session.meter().marks_echoed == 2


def test_marks_flushed_by_a_clear_make_no_round_trip() -> None:
    """Twilio echoes the marks a clear drops at once: counted as echoed, not as playback."""
    session = _in_state("streaming")
    session.from_runtime(mark_message(STREAM, "a"), 1.0)
    session.from_runtime(mark_message(STREAM, "b"), 1.1)
    session.from_runtime(clear_message(STREAM), 1.2)
    session.from_twilio(twilio_mark_message(STREAM, 3, "a"), 1.25)
    session.from_twilio(twilio_mark_message(STREAM, 4, "b"), 1.25)
    session.from_runtime(mark_message(STREAM, "c"), 2.0)
    session.from_twilio(twilio_mark_message(STREAM, 5, "c"), 2.5)
    meter = session.meter()
    assert meter.marks_sent == 3 and meter.marks_echoed == 3
    assert meter.mark_round_trip == Latency(1, 0.5, 0.5)


def test_a_long_mark_name_is_counted_not_remembered() -> None:
    """A name past MAX_MARK_NAME is forwarded and counted, but holds no memory."""
    session = _in_state("streaming")
    name = "x" * (MAX_MARK_NAME + 1)
    text = mark_message(STREAM, name)
    assert session.from_runtime(text, 1.0).forward is text
    assert session.outstanding_marks == 0
    session.from_twilio(twilio_mark_message(STREAM, 3, name), 2.0)
    assert session.meter().marks_sent == 1 and session.meter().mark_round_trip == Latency()


def test_barge_in_counts_from_the_first_clear_to_the_next_frame() -> None:
    """Two clears before the next frame make one barge-in, timed from the first."""
    session = _in_state("streaming")
    session.from_runtime(clear_message(STREAM), 1.0)
    session.from_runtime(clear_message(STREAM), 1.25)
    session.from_twilio(frame(3, 20), 1.5)
    session.from_twilio(frame(4, 40), 1.75)
    assert session.meter().barge_in == Latency(1, 0.5, 0.5)


def test_latency_median_is_of_the_recent_sample_and_max_of_all() -> None:
    """p50 is the lower median of the last LATENCY_SAMPLE round trips; count and max cover all."""
    session = _in_state("streaming")
    total = LATENCY_SAMPLE + 200
    for i in range(1, total + 1):
        session.from_runtime(mark_message(STREAM, "m"), 10.0 * i)
        session.from_twilio(twilio_mark_message(STREAM, i + 2, "m"), 10.0 * i + i / 1000)
    summary = session.meter().mark_round_trip
    # The last 1000 round trips are 201..1200 ms; their lower median is the 500th, 700 ms.
    assert summary.count == total
    assert summary.p50 == pytest.approx(0.700)
    assert summary.max == pytest.approx(1.200)


# Time limits and billed minutes.


def test_deadlines_for_start_and_duration() -> None:
    """No start by start_within, or a session past max_duration (from creation), is expired."""
    session = StreamSession(100.0, start_within=5.0, max_duration=60.0)
    assert session.deadline_for_start() == 105.0 == session.deadline()
    assert not session.expired(105.0) and session.expired(105.5)
    session.from_twilio(start_message(STREAM, CALL, ACCOUNT), 104.0)
    assert session.deadline() == 160.0
    assert not session.expired(106.0) and not session.expired(160.0) and session.expired(160.5)


@pytest.mark.parametrize(
    ("meter", "minutes", "exact"),
    [
        pytest.param(Meter(), 0, 0.0, id="never-started"),
        pytest.param(Meter(started_at=5.0, stopped_at=5.0), 1, 0.0, id="started-is-a-minute"),
        pytest.param(Meter(started_at=0.0, media_ms=60_000), 1, 1.0, id="exactly-a-minute"),
        pytest.param(Meter(started_at=0.0, media_ms=60_001), 2, 60_001 / 60_000, id="a-ms-over"),
        pytest.param(Meter(started_at=0.0, media_ms=90_000, stopped_at=999.0), 2, 1.5, id="twilio-clock-first"),
        pytest.param(Meter(started_at=10.0, stopped_at=71.0), 2, 61 / 60, id="now-values-without-media"),
        pytest.param(Meter(started_at=10.0, last_at=40.0), 1, 0.5, id="no-stop-last-message"),
        pytest.param(Meter(started_at=0.0, media_ms=4 * 3_600_000), 240, 240.0, id="four-hours"),
    ],
)
def test_minutes_round_up_each_started_minute(meter: Meter, minutes: int, exact: float) -> None:
    """Billed minutes are per started minute (1 at least once started), from Twilio's clock
    when media came; started_minute=False gives the exact fraction."""
    assert meter.minutes() == minutes
    assert meter.minutes(started_minute=False) == pytest.approx(exact)


@given(st.integers(min_value=1, max_value=4 * 3_600_000))
def test_minutes_agree_with_the_cost_module(media_ms: int) -> None:
    """The meter's minutes and telemetry.cost.billed_minutes agree on any media duration."""
    meter = Meter(started_at=0.0, media_ms=media_ms)
    assert meter.minutes() == billed_minutes(meter.seconds)


def test_media_ms_counts_from_twilio_first_timestamp() -> None:
    """Twilio's first frame may not be at 0 (its docs show 5): the span is last - first + 20."""
    session = _in_state("connected")
    session.from_twilio(start_message(STREAM, CALL, ACCOUNT), 0.0)
    for i in range(10):
        session.from_twilio(frame(i + 2, 5 + 20 * i), i / 50)
    assert session.meter().media_ms == 9 * 20 + 20


# Forwarding and Twilio's shapes.


@pytest.mark.parametrize(
    ("side", "text"),
    [
        pytest.param(
            "twilio", json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "café ☎"}}), id="escaped"
        ),
        pytest.param(
            "twilio",
            '{ "streamSid" : "' + STREAM + '", "event" : "mark", "mark" : { "name" : "café ☎" } }',
            id="spaced-unicode",
        ),
        pytest.param("twilio", json.dumps(orjson.loads(frame(3, 20)), indent=2), id="indented-media"),
        pytest.param("twilio", dtmf_message(STREAM, 3, "#"), id="dtmf"),
        pytest.param(
            "runtime", json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "é"}}), id="rt-mark"
        ),
        pytest.param(
            "runtime",
            '{"media":{"payload":"' + AUDIO + '"},"streamSid":"' + STREAM + '","event":"media"}',
            id="rt-media",
        ),
        pytest.param("runtime", '{ "event" : "clear" , "streamSid" : "' + STREAM + '" }', id="rt-clear"),
    ],
)
def test_frames_are_forwarded_as_received(side: str, text: str) -> None:
    """Whatever the spelling, the text forwarded is the very text received."""
    session = _in_state("streaming")
    result = session.from_twilio(text, 1.0) if side == "twilio" else session.from_runtime(text, 1.0)
    assert result.forward is text


def test_builders_write_twilio_documented_shapes() -> None:
    """Each builder writes Twilio's message with its fields in Twilio's order, compactly."""
    assert connected_message() == '{"event":"connected","protocol":"Call","version":"1.0.0"}'
    assert start_message(STREAM, CALL, ACCOUNT, {"FirstName": "Jane"}) == (
        '{"event":"start","sequenceNumber":"1","start":{"accountSid":"' + ACCOUNT + '","streamSid":"' + STREAM + '",'
        '"callSid":"' + CALL + '","tracks":["inbound"],'
        '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
        '"customParameters":{"FirstName":"Jane"}},"streamSid":"' + STREAM + '"}'
    )
    assert twilio_media_message(STREAM, 4, 2, 5, "no+Jh") == (
        '{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
        '"payload":"no+Jh"},"streamSid":"' + STREAM + '"}'
    )
    assert dtmf_message(STREAM, 5, "1") == (
        '{"event":"dtmf","streamSid":"'
        + STREAM
        + '","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}'
    )
    assert twilio_mark_message(STREAM, 4, "my label") == (
        '{"event":"mark","sequenceNumber":"4","streamSid":"' + STREAM + '","mark":{"name":"my label"}}'
    )
    assert stop_message(STREAM, 5, CALL, ACCOUNT) == (
        '{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"' + ACCOUNT + '","callSid":"' + CALL + '"},'
        '"streamSid":"' + STREAM + '"}'
    )
    assert media_message(STREAM, "a3242sa") == (
        '{"event":"media","streamSid":"' + STREAM + '","media":{"payload":"a3242sa"}}'
    )
    assert (
        mark_message(STREAM, "my label") == '{"event":"mark","streamSid":"' + STREAM + '","mark":{"name":"my label"}}'
    )
    assert clear_message(STREAM) == '{"event":"clear","streamSid":"' + STREAM + '"}'


def test_start_forwarded_without_the_dropped_parameters() -> None:
    """drop_parameters: the gateway's own parameter never reaches the runtime; the tenant is added."""
    session = media.StreamSession(0.0, extra_parameters={"tenant": "acme"}, drop_parameters=("switchyard_admission",))
    text = media.start_message(
        "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32, {"agent": "triage", "switchyard_admission": "v1.x"}
    )
    inbound = session.from_twilio(text, 1.0)
    assert inbound.start is not None and inbound.start.custom_parameters["switchyard_admission"] == "v1.x"
    forwarded = orjson.loads(inbound.forward)["start"]["customParameters"]
    assert forwarded == {"agent": "triage", "tenant": "acme"}


# Frames as a hostile or broken peer sends them: any text; JSON objects made of Twilio's own
# field names with any values; and Twilio's and a runtime's real messages (in Twilio's compact
# field order, so the fast paths see them) with odd text in their fields: SIDs, payloads,
# timestamps, mark names, parameters, escaped (lone surrogates as \\udxxx) or not.
_names = st.sampled_from(
    ["event", "streamSid", "media", "payload", "timestamp", "start", "callSid", "accountSid", "tracks",
     "customParameters", "mediaFormat", "encoding", "sampleRate", "channels", "mark", "name", "stop"]
)  # fmt: skip
_odd = st.sampled_from(["", STREAM, OTHER, CALL, ACCOUNT, AUDIO, "AAA=", "=", "0", "²"]) | odd_text
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _odd,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=6,
)


def _mostly(usual: st.SearchStrategy[object], odd: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """`usual` seven times in ten, else `odd`: frames that get past their first check reach the rest."""
    return st.integers(0, 9).flatmap(lambda n: usual if n < 7 else odd)


_sids = _mostly(st.just(STREAM), st.just(OTHER) | _odd)
_fields = _mostly(st.sampled_from([AUDIO, "20", "m1", "7"]), _odd | _json)
_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
_messages = st.one_of(
    st.builds(lambda sid, ts, p: {"event": "media", "sequenceNumber": "3", "media": {"track": "inbound", "chunk": "2",
              "timestamp": ts, "payload": p}, "streamSid": sid}, _sids, _fields, _fields),
    st.builds(lambda sid, p: {"event": "media", "streamSid": sid, "media": {"payload": p}}, _sids, _fields),
    st.builds(lambda sid, name: {"event": "mark", "streamSid": sid, "mark": {"name": name}}, _sids, _fields),
    st.builds(lambda sid, name: {"event": "mark", "sequenceNumber": "4", "streamSid": sid, "mark": {"name": name}},
              _sids, _fields),
    st.builds(lambda sid: {"event": "clear", "streamSid": sid}, _sids),
    st.builds(lambda sid, d: {"event": "dtmf", "streamSid": sid, "dtmf": {"digit": d}}, _sids, _fields),
    st.builds(lambda sid: {"event": "stop", "streamSid": sid, "stop": {"callSid": CALL}}, _sids),
    st.builds(lambda sid, call, params, fmt: {"event": "start", "start": {"accountSid": ACCOUNT, "streamSid": sid,
              "callSid": call, "tracks": ["inbound"], "mediaFormat": fmt, "customParameters": params},
              "streamSid": sid}, _sids, _mostly(st.just(CALL), _odd), st.dictionaries(_odd, _fields, max_size=3),
              _mostly(st.just(_FORMAT), _fields)),
    st.dictionaries(_names, _json, max_size=6),
    st.just({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
)  # fmt: skip
_texts = st.one_of(
    odd_text,
    st.builds(lambda obj, ascii: json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii), _messages, st.booleans()),
    st.builds(lambda obj: json.dumps(obj, separators=(",", ":")), _messages),
)


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@FUZZ
@given(st.booleans(), st.lists(st.tuples(st.sampled_from(["twilio", "runtime"]), _texts), max_size=8))
@example(False, [("twilio", start_message(STREAM, CALL, ACCOUNT).replace("{}", '{"\\ud800":"x"}'))])
@example(True, [("twilio", frame(1, 0)), ("twilio", frame(2, 20).replace(AUDIO, "\udcff"))])
def test_any_frames_either_way_are_taken_or_refused_with_media_error(
    started: bool, frames: list[tuple[str, str]]
) -> None:
    """A session (new, or started by Twilio's own start) fed any texts from either side, in any
    order, takes each one or refuses it with MediaError, and a refused one changes nothing; what
    it forwards is text."""
    session = StreamSession(0.0, extra_parameters={"tenant": "acme"}, drop_parameters=("switchyard_admission",))
    if started:
        session.from_twilio(start_message(STREAM, CALL, ACCOUNT, {"switchyard_admission": "x"}), 0.0)
    with bounded():
        for n, (side, text) in enumerate(frames):
            before, state = session.meter(), session.state
            receive = session.from_twilio if side == "twilio" else session.from_runtime
            try:
                forward = receive(text, float(n)).forward
            except MediaError:
                assert session.meter() == before and session.state == state
                continue
            assert forward == text or (json.loads(forward)["event"] == "start" and _encodes(forward))
        session.meter()


@FUZZ
@given(_texts)
@example('{"event":"start","start":{"customParameters":{"a":"\\ud800"}}}')
def test_any_text_has_an_event_or_a_media_error(text: str) -> None:
    """event_of(), with_parameters() and parse_start() on any text give their answer or raise MediaError, no other."""
    with bounded():
        for read in (event_of, lambda t: with_parameters(t, {"tenant": "acme"}, ("x",))):
            with contextlib.suppress(MediaError):
                assert isinstance(read(text), str)
        try:
            document = json.loads(text)
        except ValueError:
            return
        with contextlib.suppress(MediaError):
            assert isinstance(parse_start(document), Start)
