"""What one request cost, from Twilio's own fields where they exist (DESIGN §4, billing facts).

Read from the exchange: the form Twilio sent (`NumSegments` of an inbound SMS, `CallDuration` of a
completed call's status callback) and the TwiML we answered (the segments of each `<Message>`).
The prices are the tenant's (telemetry/cost.py keeps the maths); nothing here does I/O.
"""

from __future__ import annotations

from gateway.exchange import Exchange
from gateway.telemetry import cost
from gateway.telemetry.cost import Cost, Prices

# The form values the cost of a text or a status callback is worked out from (kept on the
# exchange by the handler; a voice webhook keeps none).
BILLING_FIELDS = ("NumSegments", "Body", "CallStatus", "CallDuration", "MessageStatus", "CallSid", "MessageSid")

# The outcomes that cost the tenant: a verified request answered in any way. Refusals (over a
# limit, over budget) and forged or unknown requests cost nothing.
COSTED = frozenset({"answered", "fallback", "no-route", "recorded", "error", "streamed", "sent"})


def cost_of(exchange: Exchange, prices: Prices) -> Cost:
    """What answering the request costs, in parts (micro-dollars): {} when it used nothing with a
    price or was never verified. Whether it was answered is the caller's question (COSTED)."""
    if not exchange.verified:
        return {}
    fields = exchange.fields or {}
    kind = exchange.kind
    if kind in ("stream", "api"):  # no webhook: what the bridge or the outbound API worked out
        return dict(exchange.call_cost or {})
    spent = cost.webhook_cost(prices)
    if kind == "sms":
        # Inbound (Twilio's own count) and what we answer with.
        spent = cost.add(spent, inbound_cost(exchange, prices))
        if exchange.reply:
            spent = cost.add(spent, cost.sms_cost(prices, cost.message_segments(exchange.reply)))
    elif kind == "voice":
        if exchange.reply:  # a voice answer may send an SMS too (<Message> inside <Response>)
            spent = cost.add(spent, cost.sms_cost(prices, cost.message_segments(exchange.reply)))
    elif kind == "status" and fields.get("CallStatus") == "completed":
        seconds = _int(fields.get("CallDuration", ""))
        if seconds:
            spent = cost.add(spent, cost.voice_cost(prices, seconds))
    if exchange.call_cost:  # what a call out spent (its action worked it out)
        spent = cost.add(spent, exchange.call_cost)
    return spent


def _int(value: str) -> int | None:
    # Twilio sends small decimal integers; anything else (or a huge number) is not usage.
    if not (value.isascii() and value.isdigit()) or len(value) > 9:  # '²' is a digit to isdigit()
        return None
    return int(value)


def inbound_cost(exchange: Exchange, prices: Prices) -> Cost:
    """What Twilio bills for a verified request whatever we answer: an inbound text's segments
    (Twilio's own `NumSegments`; without it, a JSON webhook or a test, the segment rules on the
    body we were sent)."""
    if not exchange.verified or exchange.kind != "sms":
        return {}
    fields = exchange.fields or {}
    inbound = _int(fields.get("NumSegments", ""))
    if inbound is None:
        inbound = cost.sms_segments(fields.get("Body", ""))
    return cost.sms_cost(prices, inbound)


STREAM_SID = "StreamSid"  # a stream's exchange.fields: the Media Stream's sid, from its `start`


def once_id(exchange: Exchange) -> str | None:
    """The id that books a status callback's cost once, however often it arrives.

    Twilio's signature has no timestamp: a captured `completed` callback replayed a thousand
    times must not book the call's minutes a thousand times (nor drain the tenant's budget)."""
    if exchange.kind == "stream":
        # A stream's minutes are booked once per stream (a call may open several, one after
        # another), whichever instance relayed it.
        stream_sid = (exchange.fields or {}).get(STREAM_SID, "")
        return f"stream:{stream_sid[:64]}" if stream_sid else None
    if exchange.kind != "status":
        return None
    fields = exchange.fields or {}
    sid = fields.get("CallSid") or fields.get("MessageSid") or ""
    status = fields.get("CallStatus") or fields.get("MessageStatus") or ""
    if not sid:
        return None
    # Bounded: the request was verified, but the id becomes a store key.
    return f"status:{sid[:64]}:{status[:32]}"
