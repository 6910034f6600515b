"""Every charge goes through FailoverLimiter: the primary store when it answers, a policy when not.

A shared store (Redis) can fail or time out; the gateway must still answer Twilio in time. Per
tenant policy, a failed charge then falls back to:
  local   this instance's own buckets, each rule's rate and burst divided by the number of live
          instances, so all instances together stay near the shared limit;
  open    admit (availability over accuracy);
  closed  refuse (for limits that guard money more than traffic).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.errors import BackendError
from gateway.limits.base import Admit, BucketStore, Decision, FailureMode, RetryKey, Rule
from gateway.limits.memory import MemoryBuckets

if TYPE_CHECKING:
    from gateway.limits.budget import BudgetCharge

log = logging.getLogger(__name__)

# What a `closed` refusal tells the client: short, since the store may be back any moment.
CLOSED_RETRY_AFTER = 1.0

FailoverTransition = Callable[[bool, BackendError | None], None]
"""Called with (degraded, the error that made it so | None when healthy again)."""


def local_rule(rule: Rule, instances: int) -> Rule:
    """This instance's share of a shared rule; same name, so headers and metrics still match."""
    n = max(1, instances)
    return Rule(rule.name, rule.rate / n, rule.per, max(1, rule.burst // n))


class Degradable:
    """Whether a shared store is failing, and who is told when that changes (the limiter's and
    the ledger's failover both keep one)."""

    def __init__(self) -> None:
        self._degraded = False
        self._listeners: list[FailoverTransition] = []

    @property
    def degraded(self) -> bool:
        """True from the primary's first failure until it answers again."""
        return self._degraded

    def on_transition(self, callback: FailoverTransition) -> None:
        """Called with the new `degraded` value (and the error, on failing) when it changes."""
        self._listeners.append(callback)

    def mark(self, degraded: bool, error: BackendError | None = None) -> None:
        """Set from outside a call (the instance heartbeat: a store unreachable from start-up is
        degraded before the first request fails over, and healthy again without one)."""
        self._set_degraded(degraded, error)

    def _set_degraded(self, degraded: bool, error: BackendError | None = None) -> None:
        if degraded and error is not None and error.overloaded:
            return  # back-pressure (a queue at the gate) fails one call over; the store is fine
        if degraded == self._degraded:
            return
        self._degraded = degraded
        for callback in self._listeners:
            try:
                callback(degraded, error)
            except Exception:
                # A broken log or metric hook must not break the call it reports on.
                log.exception("%s transition callback failed", type(self).__name__)


class FailoverLimiter(Degradable):
    """The Limiter protocol (base.py) over a BucketStore: never raises BackendError, falls back to `mode`."""

    def __init__(self, primary: BucketStore, local: MemoryBuckets, instances: Callable[[], int] = lambda: 1) -> None:
        super().__init__()
        self._primary = primary
        # An in-process primary never fails and never waits: charge it without a coroutine.
        self._sync_primary = primary if isinstance(primary, MemoryBuckets) else None
        self._local = local
        self._instances = instances

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
        """budget: charged with the buckets by the shared store, in one step; admit: the
        budget's say (given the store's error) when the store fails and the buckets fall back."""
        try:
            decision = await self._primary.acquire(tenant, rules, cost, retry, budget=budget)
        except BackendError as error:
            self._set_degraded(True, error)
            return self._fallback(tenant, rules, cost, retry, mode, admit, error)
        self._set_degraded(False)
        return decision

    def acquire_now(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int = 1,
        retry: RetryKey | None = None,
        admit: Admit | None = None,
    ) -> Decision | None:
        """The decision at once when the primary is in-process, else None: await acquire().

        Two coroutine frames per request showed up under load (memory://, one process).
        """
        if self._sync_primary is None:
            return None
        return self._sync_primary.acquire_now(tenant, rules, cost, retry, admit)

    def _fallback(
        self,
        tenant: str,
        rules: Sequence[Rule],
        cost: int,
        retry: RetryKey | None,
        mode: FailureMode,
        admit: Admit | None,
        error: BackendError,
    ) -> Decision:
        def say(budget_error: BackendError | None) -> bool:
            assert admit is not None
            return admit(error)

        if mode == "local":
            n = self._instances()
            shares = [local_rule(rule, n) for rule in rules]
            return self._local.acquire_now(tenant, shares, cost, retry, None if admit is None else say)
        tightest = min(rules, key=lambda rule: rule.burst)
        if mode == "open":
            decision = Decision(True, tightest.burst, 0.0, 0.0, tightest)
            if admit is None:
                return decision
            return replace(decision, budget="charged" if admit(error) else "over")
        return Decision(False, 0, CLOSED_RETRY_AFTER, CLOSED_RETRY_AFTER, tightest)

    @property
    def local(self) -> MemoryBuckets:
        """The buckets charged while the primary fails (this instance's share)."""
        return self._local

    async def close(self) -> None:
        await self._primary.close()
        await self._local.close()
