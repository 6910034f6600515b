"""The `llm` action: the caller's words sent to an OpenAI-compatible chat model, its answer spoken
(`<Say>`) or texted (`<Message>`).

SMS: the message's `Body` is the question, the reply a `<Message>`. Voice: a conversation of
`<Gather input="speech">` turns held without state: the turn number travels in the Gather's
action URL (`?turn=N`, signed by Twilio with the rest of the URL, so trusted once verified); a
request without `SpeechResult` gets the route's prompt inside a Gather, one with it gets the
model's answer and the next Gather, and after `max_turns` answers the closing line.

Before each call: the route's own bucket (`limits.llm`), then, for a tenant with a budget, the
estimated cost reserved on its day; after it, the real cost (from `usage`) committed, or the
hold released on any failure. Anything but a usable answer in time (timeout, 401, 429, 5xx, not
a completion, empty text, refused by the bucket or the budget) raises UpstreamError, and the
handler answers the route's fallback. No prompt or answer text reaches an error, a log or a span.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field

from gateway.actions.base import ActionKind, CompileContext, Compiled, Incoming, Tools
from gateway.actions.static import BOTH
from gateway.errors import BackendError, UpstreamError
from gateway.limits.budget import utc_day
from gateway.policy.base import Strict
from gateway.protocol import llm_twiml, openai
from gateway.telemetry.cost import MICRO, Cost, Prices, llm_cost, total
from gateway.telemetry.cost import add as cost_add

if TYPE_CHECKING:
    from gateway.deadline import Deadline
    from gateway.egress import Reply
    from gateway.exchange import AttributeValue, Exchange
    from gateway.policy.tenant import Tenant

# policy.model.ENV_NAME: that module imports this registry, so the pattern is repeated here.
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
DEFAULT_BASE_URL = "https://api.openai.com"
DEFAULT_PROMPT = "How can I help you?"
DEFAULT_CLOSING = "Thank you for calling. Goodbye."
# A chat completion of 4096 tokens is some 20 KB of JSON; more is no answer of this shape.
MAX_REPLY = 256 * 1024
# The caller's words sent on at most: an SMS body is at most 1600 characters and a speech
# result a sentence or two, so this bounds only what no genuine webhook carries.
MAX_INPUT = 4000
# The estimate of a prompt's tokens: OpenAI's rule of thumb is ~4 characters of English per
# token, and each message adds a few tokens of chat format. It only sizes the hold against the
# budget (the real cost from `usage` is what is booked); text in other scripts has more tokens
# per character, so there the hold is low, and the commit corrects the day's figure.
CHARS_PER_TOKEN = 4
FORMAT_TOKENS = 10
# Longer than any webhook lives (Twilio's 15 s at most): a hold of an instance that died lapses.
RESERVE_TTL = 30.0
PROVIDER = "openai"


class Llm(Strict):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    system: Annotated[str, Field(min_length=1, max_length=20_000)]
    max_tokens: Annotated[int, Field(ge=1, le=4096, strict=True)] = 150
    # The request field max_tokens goes in: OpenAI's reasoning models take only the second.
    limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    # The model's time to answer; never more than what is left of Twilio's (less the margin).
    timeout_ms: Annotated[int, Field(ge=50, le=15_000, strict=True)] = 4000
    api_key_env: Annotated[str, Field(pattern=ENV_NAME)]
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$")] = DEFAULT_BASE_URL
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False, strict=True)] | None = None
    # Voice only (an SMS route ignores them): the first turn's question, how many answers a
    # call gets, and the line it ends with.
    prompt: Annotated[str, Field(min_length=1, max_length=llm_twiml.SAY_LIMIT)] = DEFAULT_PROMPT
    max_turns: Annotated[int, Field(ge=1, le=20, strict=True)] = 5
    closing: Annotated[str, Field(min_length=1, max_length=llm_twiml.SAY_LIMIT)] = DEFAULT_CLOSING
    voice: str | None = None
    language: str | None = None


VoiceStep = Literal["prompt", "answer", "last", "closing"]


def voice_step(turn: int | None, heard: bool, max_turns: int) -> tuple[VoiceStep, int]:
    """What a voice request gets, and the turn its next <Gather> posts to.

    Turn 1 is the call's first webhook (no turn in its URL); turn t >= 2 carries the caller's
    words for the model's answer number t - 1. Without words: the prompt. The answer number
    `max_turns` is followed by the closing line; past it (or silent past it), the closing line
    alone, and no call to the model."""
    if turn is None:
        turn = 2 if heard else 1  # words without our turn: the tenant's own Gather posted them
    if turn - 1 > max_turns or (not heard and turn > max_turns):
        return "closing", turn
    if not heard:
        return "prompt", turn + 1
    if turn - 1 == max_turns:
        return "last", turn
    return "answer", turn + 1


def estimate(prices: Prices, model: str, system: str, words: str, max_tokens: int) -> int:
    """µ$ held before a call: the prompt's tokens estimated from its length, and `max_tokens`
    (the most the model may answer), at the model's price; 0 for a model without one."""
    tokens = math.ceil((len(system) + len(words)) / CHARS_PER_TOKEN) + FORMAT_TOKENS
    return total(llm_cost(prices, model, tokens, max_tokens))


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


@dataclass(slots=True)
class LlmCall:
    """A compiled `llm` action (the CallOut protocol)."""

    model: str
    system: str
    max_tokens: int
    limit_field: str
    temperature: float | None
    timeout: float
    url: str
    headers: Mapping[str, str] = field(repr=False)  # holds the API key
    target: str
    step: str  # the child span's name, `chat {model}`
    request_attributes: Mapping[str, AttributeValue]
    max_turns: int
    action_base: str
    # Rendered at load: the prompt document by the turn its Gather posts to, and the closing
    # line alone.
    prompts: Mapping[int, bytes]
    farewell: bytes
    closing: str
    voice: str | None
    language: str | None

    async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
        tenant = exchange.tenant
        assert tenant is not None, "an action runs for a verified request of a known tenant"
        if incoming.kind == "sms":
            words = _first(incoming.params, "Body").strip()
            if not words:
                raise UpstreamError(self.target, "no_input", detail="an empty message")
            answer = await self._answer(exchange, tenant, words, deadline, tools)
            return llm_twiml.message(answer)
        words = _first(incoming.params, "SpeechResult").strip()
        step, turn = voice_step(llm_twiml.turn_of(incoming.url), bool(words), self.max_turns)
        if step == "prompt":
            return self.prompts[turn]
        if step == "closing":
            return self.farewell
        answer = await self._answer(exchange, tenant, words, deadline, tools)
        if step == "last":
            return llm_twiml.goodbye(reply=answer, closing=self.closing, voice=self.voice, language=self.language)
        return llm_twiml.listen(
            llm_twiml.turn_url(self.action_base, turn),
            reply=answer, closing=self.closing, voice=self.voice, language=self.language,
        )  # fmt: skip

    async def _answer(self, exchange: Exchange, tenant: Tenant, words: str, deadline: Deadline, tools: Tools) -> str:
        """The model's answer to `words`, charged to the llm bucket and the tenant's day."""
        words = words[:MAX_INPUT]
        await self._charge_bucket(exchange, tenant, tools)
        prices = tenant.prices
        day = utc_day(tools.wall())
        held = None
        amount = estimate(prices, self.model, self.system, words, self.max_tokens)
        ledger = tools.ledger
        clock = exchange.clock
        if tenant.daily_budget is not None and amount:
            sent = clock()
            try:
                held = await ledger.reserve(
                    tenant.id, day, amount, tenant.daily_budget, RESERVE_TTL, tenant.on_store_failure
                )
            except BackendError:  # `closed`, and the ledger cannot say: the fallback, not a spent day
                raise UpstreamError(self.target, "budget_unavailable", detail="the spend ledger is failing") from None
            if ledger.shared:
                exchange.timed("budget.reserve", clock() - sent, sent)
            if held is None:
                raise UpstreamError(self.target, "over_budget", detail=f"{amount} µ$ does not fit today's budget")
        settled = False
        try:
            completion, spent = await self._call(exchange, prices, words, amount, deadline, tools)
            # Usage known: the tokens were spent whether or not the text is usable.
            sent = clock()
            # Part of the request's cost (its span, the access line, the metrics): booked at the
            # end with the rest, unless the hold's commit books it now.
            exchange.call_cost = cost_add(exchange.call_cost or {}, spent)
            if held is not None:
                await ledger.commit(held, spent)
                settled = True
                exchange.charged = cost_add(exchange.charged or {}, spent)
                if ledger.shared:
                    exchange.timed("budget.charge", clock() - sent, sent)
        finally:
            # Failed, refused or cancelled: what was held for it no longer counts against the cap.
            if held is not None and not settled:
                sent = clock()
                await ledger.release(held)
                if ledger.shared:
                    exchange.timed("budget.release", clock() - sent, sent)
        if not completion.content.strip():
            raise UpstreamError(self.target, "empty", detail=",".join(completion.finish_reasons))
        return completion.content

    async def _charge_bucket(self, exchange: Exchange, tenant: Tenant, tools: Tools) -> None:
        rules = tenant.rules.get("llm")
        if not rules:
            return
        limits = tools.limits
        decision = limits.acquire_now(tenant.id, rules)
        if decision is None:  # a shared store: one round trip
            clock = exchange.clock
            sent = clock()
            decision = await limits.acquire(tenant.id, rules, mode=tenant.on_store_failure)
            exchange.timed("limits", clock() - sent, sent)
        if not decision.allowed:
            raise UpstreamError(self.target, "rate_limited", detail=f"limits.llm: retry in {decision.retry_after:.1f}s")

    async def _call(
        self, exchange: Exchange, prices: Prices, words: str, amount: int, deadline: Deadline, tools: Tools
    ) -> tuple[openai.Completion, Cost]:
        """One chat completion and what it cost, recorded as the child span `chat {model}`."""
        body = openai.chat_request(self.model, self.system, words, self.max_tokens, self.temperature, self.limit_field)
        attributes: dict[str, AttributeValue] = dict(self.request_attributes)
        clock = exchange.clock
        started = clock()
        try:
            reply = await tools.egress.request(
                "POST", self.url, target=self.target, deadline=deadline, cap=self.timeout,
                headers=self.headers, body=body, max_body=MAX_REPLY,
            )  # fmt: skip
            completion = self._completion(reply)
            if completion.input_tokens is not None and completion.output_tokens is not None:
                spent = llm_cost(prices, self.model, completion.input_tokens, completion.output_tokens)
            else:
                # No usage in the answer: the estimate stands for the real cost (never under it).
                spent = {"llm": amount} if amount else {}
            attributes.update(_response_attributes(completion, spent))
            if not completion.content.strip():
                attributes["error.type"] = "empty"
            return completion, spent
        except UpstreamError as error:
            attributes["error.type"] = error.reason
            raise
        except BaseException as error:  # cancelled by the request's deadline, or a bug
            attributes["error.type"] = type(error).__name__
            raise
        finally:
            exchange.timed(self.step, clock() - started, started, None, attributes)

    def _completion(self, reply: Reply) -> openai.Completion:
        """The answer's completion, or UpstreamError saying what was wrong (no text of it)."""
        status = reply.status
        if status == 401:
            raise UpstreamError(self.target, "unauthorized", status, openai.error_code(reply.body))
        if status == 429:
            wait = openai.retry_after(reply.headers.get("retry-after"))
            code = openai.error_code(reply.body)
            detail = ", ".join(part for part in (code, f"retry-after {wait}" if wait else "") if part)
            raise UpstreamError(self.target, "rate_limited", status, detail)
        if not 200 <= status < 300:
            raise UpstreamError(self.target, "status", status, openai.error_code(reply.body))
        try:
            return openai.parse_completion(reply.body)
        except ValueError as exc:
            raise UpstreamError(self.target, "malformed", status, str(exc)) from None


def _response_attributes(completion: openai.Completion, spent: Cost) -> dict[str, AttributeValue]:
    """The GenAI response attributes; finish reasons comma-joined, as our OTLP encoder writes
    scalars only (the convention's type is a string array)."""
    out: dict[str, AttributeValue] = {"switchyard.cost.usd": total(spent) / MICRO}
    if completion.model:
        out["gen_ai.response.model"] = completion.model
    if completion.finish_reasons:
        out["gen_ai.response.finish_reasons"] = ",".join(completion.finish_reasons)
    if completion.input_tokens is not None:
        out["gen_ai.usage.input_tokens"] = completion.input_tokens
    if completion.output_tokens is not None:
        out["gen_ai.usage.output_tokens"] = completion.output_tokens
    return out


def _action_base(context: CompileContext) -> str:
    """Where a Gather posts the caller's words: this tenant's own voice webhook under the public
    URL; without one, "" (relative: Twilio keeps the path it called, changes the query)."""
    if context.public_url is None:
        return ""
    parts = urlsplit(context.public_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public URL {context.public_url!r} must be http(s)://host[/prefix]")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/t/{context.tenant_id}/voice"


def _compile(value: Llm, context: CompileContext) -> Compiled:
    key = context.secret(value.api_key_env).decode()  # only ever in the Authorization header
    parts = urlsplit(value.base_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    request_attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": value.model,
        "gen_ai.request.max_tokens": value.max_tokens,
        "server.address": host,
        "server.port": port,
    }
    if value.temperature is not None:
        request_attributes["gen_ai.request.temperature"] = value.temperature
    base = _action_base(context)
    voice, language = value.voice, value.language
    prompts = {
        turn: llm_twiml.listen(
            llm_twiml.turn_url(base, turn), prompt=value.prompt, closing=value.closing, voice=voice, language=language
        )
        for turn in range(2, value.max_turns + 2)
    }
    call = LlmCall(
        model=value.model,
        system=value.system,
        max_tokens=value.max_tokens,
        limit_field=value.limit_field,
        temperature=value.temperature,
        timeout=value.timeout_ms / 1000,
        url=value.base_url.rstrip("/") + openai.CHAT_PATH,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        target=f"llm {context.tenant_id} {host}",
        step=f"chat {value.model}",
        request_attributes=request_attributes,
        max_turns=value.max_turns,
        action_base=base,
        prompts=prompts,
        farewell=llm_twiml.goodbye(closing=value.closing, voice=voice, language=language),
        closing=value.closing,
        voice=voice,
        language=language,
    )
    return Compiled(call=call)


LLM = ActionKind("llm", Llm, BOTH, _compile)
