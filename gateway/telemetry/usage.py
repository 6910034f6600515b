"""What one request cost, from Twilio's own fields where they exist (DESIGN §4, billing facts).

Read from the exchange: the form Twilio sent (`NumSegments` of an inbound SMS, `CallDuration` of a
completed call's status callback) and the TwiML we answered (the segments of each `<Message>`).
The prices are the tenant's (telemetry/cost.py keeps the maths); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.exchange import Exchange
from gateway.telemetry import cost
from gateway.telemetry.cost import Cost, Prices

# The outcomes that cost the tenant: a verified request answered in any way. Refusals (over a
# limit, over budget) and forged or unknown requests cost nothing.
COSTED = frozenset({"answered", "fallback", "no-route", "recorded", "error"})


def cost_of(exchange: Exchange, prices: Prices) -> Cost:
    """What answering the request costs, in parts (micro-dollars): {} when it used nothing with a
    price or was never verified. Whether it was answered is the caller's question (COSTED)."""
    if not exchange.verified:
        return {}
    params: Mapping[str, list[str]] = exchange.params or {}
    kind = exchange.kind
    spent = cost.webhook_cost(prices)
    if kind == "sms":
        # Inbound: Twilio's own count. A form without it (a JSON webhook, a test) falls back to
        # the segment rules on the body we were sent.
        inbound = _int(_first(params, "NumSegments"))
        if inbound is None:
            inbound = cost.sms_segments(_first(params, "Body"))
        segments = inbound + (cost.message_segments(exchange.reply) if exchange.reply else 0)
        spent = cost.add(spent, cost.sms_cost(prices, segments))
    elif kind == "voice":
        if exchange.reply:  # a voice answer may send an SMS too (<Message> inside <Response>)
            spent = cost.add(spent, cost.sms_cost(prices, cost.message_segments(exchange.reply)))
    elif kind == "status" and _first(params, "CallStatus") == "completed":
        seconds = _int(_first(params, "CallDuration"))
        if seconds:
            spent = cost.add(spent, cost.voice_cost(prices, seconds))
    return spent


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


def _int(value: str) -> int | None:
    # Twilio sends small decimal integers; anything else (or a huge number) is not usage.
    if not value.isdigit() or len(value) > 9:
        return None
    return int(value)
