"""The one narrow interface every limit store implements, and the values it trades in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# How long a Twilio retry's I-Twilio-Idempotency-Token is remembered (the memory store keeps it
# at least half of this). Twilio's retries of one webhook all fit in its total-time budget (the
# `tt` override, 15 s by default); every token remembered costs memory at thousands a second.
DEDUP_TTL = 60.0


@dataclass(frozen=True, slots=True)
class Rule:
    """One named token bucket: `rate` tokens per `per` seconds, holding at most `burst`."""

    name: str
    rate: float
    per: float
    burst: int

    @property
    def interval(self) -> float:
        """Seconds to refill one token (the GCRA emission interval)."""
        return self.per / self.rate


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of charging one or more buckets.

    remaining: whole tokens left after this charge (0 when refused).
    retry_after: seconds until the charge would succeed (0.0 when allowed).
    reset: seconds until the bucket is full again.
    rule: the bucket this decision speaks for (the refusing one, else the tightest).
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset: float
    rule: Rule


class Limiter(Protocol):
    """Charges a tenant's buckets all-or-nothing: if any bucket refuses, none is charged."""

    async def acquire(
        self, tenant: str, rules: Sequence[Rule], cost: int = 1, dedup_key: str | None = None
    ) -> Decision:
        """Charge `cost` tokens to each of `rules` for `tenant`; `rules` is never empty.

        With `dedup_key` (a Twilio retry's I-Twilio-Idempotency-Token), a key already admitted
        within the store's dedup TTL reports the buckets without charging them again.
        Raises BackendError when a shared store fails; never for "over the limit".
        """
        ...

    async def close(self) -> None:
        """Release connections and background tasks."""
        ...
