"""The one narrow interface every limit store implements, and the values it trades in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from gateway.errors import BackendError
    from gateway.limits.budget import BudgetCharge

# How long a Twilio retry's I-Twilio-Idempotency-Token is remembered (the memory store keeps it
# at least half of this). Twilio's retries of one webhook all fit in its total-time budget (the
# `tt` override, 15 s by default); every token remembered costs memory at thousands a second.
DEDUP_TTL = 60.0

# Longer retry tokens are not remembered (charged as if they had none). The token header is not
# covered by Twilio's signature, and a captured signed request can be replayed (no timestamp):
# whoever holds one chooses the token's length. Only admitted charges are remembered, so the
# count is bounded by the tenant's rate times the TTL; this bounds the size of each entry.
MAX_RETRY_TOKEN = 128


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
    # How the retry token of the charge was seen: "new" (or no token), "replay" (the same token
    # *and* the same signed request were admitted before: reported, not charged), "mismatch"
    # (the token was admitted before with another request: charged like any other, and logged).
    retry: RetryOutcome = "new"
    # A budgeted charge (BudgetCharge): "charged" with the buckets, "over" the day's cap (the
    # buckets then charged nothing either), or "none" (no budget asked, a replay, or refused by
    # the buckets first). spent: the day's µ$ spent + held after it, when a shared store said.
    budget: BudgetOutcome = "none"
    spent: int | None = None


RetryOutcome = Literal["new", "replay", "mismatch"]
FailureMode = Literal["local", "open", "closed"]
BudgetOutcome = Literal["none", "charged", "over"]

Admit = Callable[["BackendError | None"], bool]
"""The budget's say in an in-process charge, called once the buckets would admit it and before
they are charged: True charges both, False neither. Given the store's error when it is the
fallback of a shared store that failed (None in process)."""


@dataclass(frozen=True, slots=True)
class RetryKey:
    """Twilio's I-Twilio-Idempotency-Token bound to the request it came with.

    A retry is the same signed request sent again with the same token; `binding` is a digest of
    what was signed (the X-Twilio-Signature header), so a token replayed on another request
    does not inherit the first one's admission.
    """

    token: str
    binding: str


class BucketStore(Protocol):
    """Charges a tenant's buckets all-or-nothing: if any bucket refuses, none is charged."""

    async def acquire(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        *,
        budget: BudgetCharge | None = None,
    ) -> Decision:
        """Charge `cost` tokens to each of `rules` for `tenant`; `rules` is never empty.

        With `budget` (a shared store only), the tenant's day is charged in the same atomic step:
        refused by either, charged by neither (Decision.budget says which).

        With `retry`, a token admitted within the store's dedup TTL with the same binding
        reports the buckets without charging them (retry="replay"); with another binding it is
        charged like any request (retry="mismatch") and the token stays the first request's.
        A token is remembered only when its charge is admitted, and only up to MAX_RETRY_TOKEN
        characters (longer ones count as no token).
        Raises BackendError when a shared store fails; never for "over the limit".
        """
        ...

    async def close(self) -> None:
        """Release connections and background tasks."""
        ...


class Limiter(Protocol):
    """What request handlers charge: a store behind the tenant's `on_store_failure` rule.

    `acquire_now` is the synchronous fast path: the decision at once when the store is in
    process, else None, and the caller awaits `acquire` (a coroutine frame per request was
    measurable under load).
    """

    @property
    def degraded(self) -> bool:
        """True while the shared store is failing and tenants' failure rules apply."""
        ...

    def acquire_now(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        admit: Admit | None = None,
    ) -> Decision | None: ...

    async def acquire(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        mode: FailureMode = "local",
        budget: BudgetCharge | None = None,
        admit: Admit | None = None,
    ) -> Decision:
        """`budget` goes to the shared store with the buckets; `admit` decides it in this
        process's fallback, should the store fail."""
        ...

    async def close(self) -> None: ...
