"""The demo runtime's pure parts: its canned model answer, its echo agent's answers, the tokens
it reads by the policies, and the parent watch that stops it with the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.demo import chat
from gateway.demo.agent import MARK_EVERY, EchoAgent
from gateway.demo.process import watch_parent
from gateway.demo.runtime import tokens_from_policies
from gateway.protocol import media
from tests.support.gateway import POLICIES
from tests.support.twilio import BISTRO_TOKEN, ENV, NORTHWIND_TOKEN


def test_the_canned_answer_quotes_the_last_user_message() -> None:
    """The answer quotes the last user turn (whitespace folded), the same for the same words."""
    request = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"},
            {"role": "user", "content": "  are you\nopen  today? "},
        ],
    }
    first, again = chat.completion(request, 1), chat.completion(request, 2)
    assert first["choices"][0]["message"]["content"] == '(demo model) You said: "are you open today?"'
    assert first["id"] == again["id"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_answer_respects_max_tokens_and_counts_tokens_roughly(field: str) -> None:
    """A limit of 3 tokens (either field the gateway may send) cuts the text to ~12 characters;
    usage counts len // 4 + 1 each way."""
    request = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}], field: 3}
    answer = chat.completion(request, 1)
    content = answer["choices"][0]["message"]["content"]
    assert content == "(demo model)"
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def test_a_long_message_is_quoted_in_part() -> None:
    """Words past the quote length end in an ellipsis: the reply stays short."""
    text = chat.reply("word " * 100, 1000)
    assert len(text) < 140 and text.endswith('…"')


def test_malformed_requests_are_named() -> None:
    """No model, no messages, a bad max_tokens or a stream request: each names its parameter."""
    assert chat.problem({"messages": [{"role": "user", "content": "hi"}]}) == (
        "You must provide a model parameter.",
        "model",
    )
    assert chat.problem({"model": "m", "messages": []}) == ("'messages' must be a non-empty array.", "messages")
    assert chat.problem({"model": "m", "messages": [{}], "max_tokens": True})[1] == "max_tokens"  # type: ignore[index]
    assert chat.problem({"model": "m", "messages": [{}], "stream": True})[1] == "stream"  # type: ignore[index]
    assert chat.problem([]) == ("The request body must be a JSON object.", "")
    assert chat.problem({"model": "m", "messages": [{}], "max_tokens": 5}) is None


SID = "MZ" + "1" * 32
CALL = "CA" + "1" * 32
ACCOUNT = "AC" + "1" * 32


def _started() -> EchoAgent:
    agent = EchoAgent("acme-health")
    assert agent.answer(media.start_message(SID, CALL, ACCOUNT, {"agent": "triage"})) == []
    return agent


def test_the_echo_agent_echoes_each_frame_and_marks_each_second() -> None:
    """Each media payload comes back as our media for the stream; after every 50th frame a mark."""
    agent = _started()
    answers = [agent.answer(media.twilio_media_message(SID, i + 2, i + 1, 20 * i, f"p{i}")) for i in range(100)]
    assert answers[0] == [media.media_message(SID, "p0")]
    assert answers[MARK_EVERY - 1] == [media.media_message(SID, "p49"), media.mark_message(SID, "echo-50")]
    assert answers[99][1] == media.mark_message(SID, "echo-100")
    assert sum(len(a) for a in answers) == 102 and (agent.frames, agent.marks_sent) == (100, 2)


def test_a_digit_gets_a_clear_then_a_mark_and_stop_ends_the_agent() -> None:
    """dtmf: clear, then a mark; a mark echo is counted; stop marks the agent stopped, unanswered."""
    agent = _started()
    assert agent.answer(media.dtmf_message(SID, 2, "9")) == [
        media.clear_message(SID),
        media.mark_message(SID, "dtmf-1"),
    ]
    assert agent.answer(media.twilio_mark_message(SID, 3, "dtmf-1")) == []
    assert agent.answer(media.stop_message(SID, 4, CALL, ACCOUNT)) == []
    assert (agent.marks_echoed, agent.dtmf, agent.stopped) == (1, 1, True)


def test_the_echo_agent_answers_nothing_not_for_its_stream() -> None:
    """Before start, another stream's, not JSON, not an object, a second or bad start: no answer."""
    agent = EchoAgent("acme-health")
    frame = media.twilio_media_message(SID, 2, 1, 0, "p")
    assert agent.answer(frame) == []  # no start yet
    assert agent.answer('{"event": "start", "start": {}}') == [] and agent.stream_sid == ""
    agent = _started()
    other = "MZ" + "2" * 32
    for text in (
        media.twilio_media_message(other, 2, 1, 0, "p"),
        media.start_message(other, CALL, ACCOUNT),
        "not json",
        "[]",
        '{"event": "media", "streamSid": "' + SID + '", "media": {}}',
    ):
        assert agent.answer(text) == []
    assert agent.stream_sid == SID and agent.frames == 0


def test_tokens_come_from_the_variables_the_policies_name() -> None:
    """Each example tenant's token is read from its policy's auth_token_env, nothing else; its
    account's SID names the same token (for the REST stand-in's Basic auth)."""
    tokens, accounts, notes = tokens_from_policies(POLICIES, ENV)
    assert (tokens["bistro"], tokens["northwind"]) == (BISTRO_TOKEN, NORTHWIND_TOKEN)
    assert sorted(tokens) == ["acme-health", "bistro", "northwind"] and notes == []
    assert accounts["AC00000000000000000000000000000003"] == NORTHWIND_TOKEN and len(accounts) == 3


def test_a_tenant_without_its_token_is_left_out_with_a_note(tmp_path: Path) -> None:
    """An unset variable or an unreadable file leaves the tenant out and says why (not the token)."""
    (tmp_path / "shop.yaml").write_text("twilio: {auth_token_env: SHOP_TOKEN}\n")
    (tmp_path / "broken.yml").write_text("twilio: [\n")
    tokens, accounts, notes = tokens_from_policies(tmp_path, {})
    assert tokens == {} and accounts == {}
    assert notes == [
        "broken.yml: no twilio.auth_token_env read (ParserError); tenant left out",
        "shop.yaml: SHOP_TOKEN is not set; tenant 'shop' left out",
    ]


async def test_the_runtime_stops_when_its_parent_changes() -> None:
    """The watch sets the stop event once getppid() no longer names the parent it was given."""
    parents = iter([100, 100, 1])
    stop = asyncio.Event()
    await asyncio.wait_for(watch_parent(100, stop, interval=0, getppid=lambda: next(parents)), 5)
    assert stop.is_set()


async def test_the_watch_ends_when_the_runtime_stops_otherwise() -> None:
    """Stopped by a signal, the watch ends without reading the parent again."""

    def never() -> int:
        raise AssertionError("the parent was read after the stop")

    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(watch_parent(100, stop, interval=0, getppid=never), 5)
