"""The `stream` action: the call's audio handed to a Media Stream (`<Connect><Stream>`).

Two forms:
- `url`: Twilio connects straight to the tenant's runtime. Static TwiML, rendered at load.
- `upstream`: Twilio connects to the gateway's own `/t/<tenant>/stream`, which verifies the
  upgrade and relays to `upstream` (bridge/). Answering the webhook is then admission: the
  tenant's `concurrent_streams` slot is taken (a lease that must be claimed soon by the stream
  itself) and the stream's estimate held on the budget, before Twilio is told to connect, so a
  caller over either hears the refusal rather than a stream that would be cut. The answer carries
  an admission token (auth/admission.py) the stream's `start` must bring back.

After `</Connect>` comes the route's fallback (or the tenant's): Twilio goes on to the next verb
when the stream ends, whether the runtime hung up, failed, or was never reached.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.actions.base import ActionKind, CompileContext, Compiled, Incoming, Tools
from gateway.actions.static import VOICE
from gateway.auth import admission
from gateway.errors import AdmissionRefused, BackendError, UpstreamError
from gateway.limits.budget import Reservation, utc_day
from gateway.limits.leases import Lease
from gateway.policy.base import Strict
from gateway.protocol import twiml

if TYPE_CHECKING:
    from gateway.deadline import Deadline
    from gateway.exchange import Exchange
    from gateway.policy.tenant import Tenant

log = logging.getLogger(__name__)

STREAMS = "streams"  # the lease kind of concurrent_streams
UNLIMITED = 2**31 - 1  # the lease limit of a tenant with no concurrent_streams
# From the webhook's answer to the stream's `start`: Twilio connects within a second or two;
# a slot not claimed by then is given back.
CLAIM_TTL = 60.0
# Twilio ends a stream after 4 hours at most.
MAX_DURATION_S = 4 * 3600
# Stands in for the public URL under `switchyard check`, which validates without one.
PLACEHOLDER_BASE = "wss://public-url.invalid"
_TOKEN_SLOT = "SWITCHYARD-ADMISSION-SLOT"  # noqa: S105 - a placeholder, replaced per call in the TwiML
_CALL_SID = re.compile(r"^CA[0-9a-fA-F]{32}$")
RESERVED = frozenset({"tenant", admission.PARAMETER})


class Stream(Strict):
    url: Annotated[str, Field(pattern=r"^wss?://[^?#]+$")] | None = None
    upstream: Annotated[str, Field(pattern=r"^wss?://[^?#\s]+$")] | None = None
    name: str | None = None
    # A bidirectional <Connect><Stream> carries only the caller's audio to us.
    track: Literal["inbound_track"] | None = None
    parameters: dict[Annotated[str, Field(min_length=1)], str] = Field(default_factory=dict)
    # Bridged streams only: the longest a stream may last, and the minutes of stream_minute held
    # on the budget when it is admitted (the real minutes are booked when it ends).
    max_duration_s: Annotated[int, Field(ge=10, le=MAX_DURATION_S, strict=True)] = MAX_DURATION_S
    reserve_minutes: Annotated[int, Field(ge=1, le=240, strict=True)] = 10

    @field_validator("parameters")
    @classmethod
    def _ours(cls, parameters: dict[str, str]) -> dict[str, str]:
        for name in RESERVED & parameters.keys():
            raise ValueError(f"{name!r} is set by the gateway; choose another name")
        return parameters

    @model_validator(mode="after")
    def _one_target(self) -> Stream:
        if (self.url is None) == (self.upstream is None):
            raise ValueError(
                "give `upstream` (the runtime's WebSocket: the gateway verifies, admits and relays) "
                "or `url` (Twilio connects to the runtime directly), not both"
            )
        return self


@dataclass(frozen=True, slots=True)
class Bridged:
    """What the stream endpoint needs of a bridged route (found again by the route's name)."""

    upstream: str
    max_duration: float
    reserve_minutes: int


@dataclass(slots=True)
class StreamAdmission:
    """A compiled bridged `stream` action (the CallOut protocol): admission, then the TwiML."""

    tenant: str
    route: str
    key: bytes = field(repr=False)  # the tenant's auth token: signs the admission token
    head: bytes  # the TwiML up to the token's value
    tail: bytes  # the rest, the fallback after </Connect> included
    bridged: Bridged

    async def run(self, exchange: Exchange, incoming: Incoming, deadline: Deadline, tools: Tools) -> bytes:
        tenant = exchange.tenant
        assert tenant is not None, "a call-out runs for a known tenant"
        values = incoming.params.get("CallSid")
        call_sid = values[0] if values else ""
        if not _CALL_SID.match(call_sid):
            raise UpstreamError("stream", "invalid", detail="the webhook has no CallSid")
        # Every bridged stream holds a lease, limit or not: its claim is what makes an admission
        # good for one stream only. Named by the call: a webhook Twilio retries (or one
        # replayed) extends the call's pending slot rather than taking another.
        limited = tenant.concurrent_streams is not None
        limit = tenant.concurrent_streams if tenant.concurrent_streams is not None else UNLIMITED
        lease: Lease | None = None
        try:
            lease = await tools.leases.acquire(tenant.id, STREAMS, limit, CLAIM_TTL, id=call_sid)
        except BackendError as error:
            if limited and tenant.on_store_failure == "closed":
                raise AdmissionRefused("concurrent_streams", "the lease store is failing") from None
            log.warning("tenant %s: stream admitted without a slot, the lease store failing: %s", tenant.id, error)
        else:
            if lease is None:
                raise AdmissionRefused("concurrent_streams", f"{limit} open")
        wall = tools.wall()
        try:
            held = await self._hold(tenant, tools, wall, call_sid)
        except BaseException:  # refused, failed or cancelled: the slot is not left to its TTL
            if lease is not None and lease.fresh:  # (one only extended is an earlier answer's)
                await _give_back(tools, lease)
            raise
        nonce = admission.new_nonce()
        token = admission.issue(self.key, tenant.id, call_sid, self.route, nonce, held, int(wall + CLAIM_TTL))
        return self.head + token.encode() + self.tail

    async def _hold(self, tenant: Tenant, tools: Tools, wall: float, call_sid: str) -> int:
        """Hold the stream's estimate on the budget until it is claimed (the stream then keeps
        it alive while it lasts); the µ$ held, 0 with no budget. AdmissionRefused when it does
        not fit."""
        price = tenant.prices.stream_minute
        if tenant.daily_budget is None or not price:
            return 0
        amount = self.bridged.reserve_minutes * price
        try:
            held = await tools.ledger.reserve(
                tenant.id, utc_day(wall), amount, tenant.daily_budget, CLAIM_TTL, tenant.on_store_failure,
                id=stream_hold(call_sid),
            )  # fmt: skip
        except BackendError:  # `closed`, and the ledger cannot say
            raise AdmissionRefused("budget", "the spend ledger is failing") from None
        if held is None:
            raise AdmissionRefused("budget", "the day's budget is spent")
        return held.amount


def stream_hold(call_sid: str) -> str:
    """The id of a stream's budget hold: rebuilt by whichever instance the stream ends on."""
    return "stream:" + call_sid[:64]


def stream_holds(tenant: Tenant, day: str, call_sid: str) -> list[Reservation]:
    """Every hold a bridged stream of this call may have made: one per distinct estimate among
    the tenant's bridged routes (a hold is named by its amount too; releasing one never made is
    a no-op). For a call that ended without its stream's end being booked."""
    price = tenant.prices.stream_minute
    if tenant.daily_budget is None or not price:
        return []
    amounts = {r.call.bridged.reserve_minutes * price for r in tenant.routes if isinstance(r.call, StreamAdmission)}
    return [Reservation(tenant.id, day, stream_hold(call_sid), amount) for amount in sorted(amounts)]


def hold_of(tenant: str, admitted: admission.Admission, call_sid: str) -> Reservation | None:
    """The budget hold a stream's admission made, rebuilt as it was made (day and amount from
    the token); None if it made none."""
    if not admitted.held:
        return None
    return Reservation(tenant, utc_day(admitted.expires - CLAIM_TTL), stream_hold(call_sid), admitted.held)


async def _give_back(tools: Tools, lease: Lease) -> None:
    try:
        await tools.leases.release(lease)
    except BackendError as error:  # it expires at CLAIM_TTL anyway
        log.warning("tenant %s: stream slot not given back: %s", lease.tenant, error)


def _inner(document: bytes) -> bytes:
    """The verbs of a TwiML document, without its declaration and <Response> wrapper."""
    text = document.strip()
    if text.startswith(b"<?xml"):
        text = text[text.index(b"?>") + 2 :].lstrip()
    if text.startswith(b"<Response/>") or text.startswith(b"<Response />") or not text.startswith(b"<Response"):
        return b""
    return text[text.index(b">") + 1 : text.rindex(b"</Response>")]


def _compile(action: Stream, ctx: CompileContext) -> Compiled:
    parameters = {"tenant": ctx.tenant_id, **action.parameters}
    if action.url is not None:
        return Compiled(twiml.stream(action.url, parameters, name=action.name, track=action.track))
    assert action.upstream is not None
    base = ctx.websocket_base()
    if base is None:
        own = f"/t/{ctx.tenant_id}/stream"
        if not ctx.note(f"the call goes to the gateway's own {own}, under the --public-url given to serve"):
            raise ValueError("a bridged stream needs the gateway's --public-url (Twilio connects to it)")
        base = PLACEHOLDER_BASE
    if ctx.signing_key is None:
        raise ValueError("the tenant's auth token is needed to sign the upgrade to the runtime")
    url = f"{base}/t/{ctx.tenant_id}/stream"
    document = twiml.stream(url, {**parameters, admission.PARAMETER: _TOKEN_SLOT}, name=action.name, track=action.track)
    head, _, tail = document.partition(_TOKEN_SLOT.encode())
    # Twilio plays what follows </Connect> once the stream ends: the route's fallback.
    end = tail.rindex(b"</Response>")
    tail = tail[:end] + _inner(ctx.fallback or twiml.VOICE_FALLBACK) + tail[end:]
    bridged = Bridged(action.upstream, float(action.max_duration_s), action.reserve_minutes)
    call = StreamAdmission(ctx.tenant_id, ctx.route, ctx.signing_key, head, tail, bridged)
    return Compiled(call=call)


STREAM = ActionKind("stream", Stream, VOICE, _compile)
