"""A webhook's admission in one step: its tenant's buckets and, with a daily budget, its cost
(and a call's hold) on the day: refused by either, charged by neither.

In process the ledger decides inside the buckets' charge (MemoryBuckets' admit hook: nothing is
awaited); on Redis one script does both in the limiter's coalesced round trip (redis_bucket.lua
over redis_ledger.lua), where before a budgeted webhook made one to three round trips of its
own. When Redis fails, both fall back together: the local buckets' share, then the local
ledger's (budget_failover.py), by the tenant's on_store_failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from gateway.errors import BackendError
from gateway.limits.base import BudgetOutcome, Decision, FailureMode, Limiter, RetryKey, Rule
from gateway.limits.budget import BudgetCharge
from gateway.limits.budget_failover import FailoverLedger


@dataclass(frozen=True, slots=True)
class Admission:
    """decision: the buckets' (None when the tenant has none for this kind); budget: how the
    day's charge went ("none" without a budget, for a replay, or when the buckets refused)."""

    decision: Decision | None
    budget: BudgetOutcome


NOTHING = Admission(None, "none")


def admit_now(
    limits: Limiter,
    ledger: FailoverLedger,
    tenant: str,
    rules: Sequence[Rule],
    retry: RetryKey | None,
    budget: BudgetCharge | None,
) -> Admission | None:
    """The admission at once when the stores are in process, else None: await admit()."""
    if budget is None:
        if not rules:
            return NOTHING
        decision = limits.acquire_now(tenant, rules, 1, retry)
        return None if decision is None else Admission(decision, "none")
    if ledger.shared:
        return None
    if not rules:
        admitted = ledger.charge_now(tenant, budget.day, budget.cost, budget.cap, budget.hold)
        return Admission(None, "charged" if admitted else "over")

    def say(_error: BackendError | None) -> bool:
        return bool(ledger.charge_now(tenant, budget.day, budget.cost, budget.cap, budget.hold))

    decision = limits.acquire_now(tenant, rules, 1, retry, say)
    return None if decision is None else Admission(decision, decision.budget)


async def admit(
    limits: Limiter,
    ledger: FailoverLedger,
    tenant: str,
    rules: Sequence[Rule],
    retry: RetryKey | None,
    budget: BudgetCharge | None,
    mode: FailureMode,
) -> Admission:
    """The admission from a shared store: one round trip (coalesced with other requests')."""
    if budget is None:
        if not rules:
            return NOTHING
        return Admission(await limits.acquire(tenant, rules, 1, retry, mode=mode), "none")
    if not rules:
        admitted = await ledger.charge(tenant, budget.day, budget.cost, budget.cap, budget.hold, mode=mode)
        return Admission(None, "charged" if admitted else "over")

    charge: BudgetCharge = budget  # not rebound: the fallback below closes over it

    def fallback(error: BackendError | None) -> bool:
        return ledger.fallback_now(tenant, charge.day, charge.cost, charge.cap, mode, charge.hold, error)

    # What this instance booked for the tenant's day during an outage rides with its first charge
    # after it, in the same step: the store decides on the whole day, not on what it last knew.
    replay = ledger.take_unsynced(tenant, charge.day)
    sent = replace(charge, replay=replay) if replay else charge
    reached = False
    try:
        decision = await limits.acquire(tenant, rules, 1, retry, mode=mode, budget=sent, admit=fallback)
        reached = decision.spent is not None  # the store's script ran: the replay is on its books
    finally:
        if replay:
            if reached:
                ledger.replayed_with_charge(tenant, charge.day, replay)
            else:
                ledger.keep_unsynced(tenant, charge.day, replay)
    if decision.spent is not None:
        ledger.saw(tenant, charge.day, decision.spent)
    if not limits.degraded and ledger.needs_answer:
        # The store answered: the ledger is healthy again, and what it booked meanwhile goes back.
        await ledger.answered()
    return Admission(decision, decision.budget)
