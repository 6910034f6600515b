"""The live set of tenants: lookups for the hot path, and an atomic swap on reload."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import PolicyError
from gateway.policy.loader import LoadContext, Loaded, Stamp, load_set, stamps
from gateway.policy.tenant import Tenant


@dataclass(frozen=True, slots=True)
class PolicySet:
    """An immutable snapshot: a request holds one for its whole life, whatever reloads happen."""

    tenants: Mapping[str, Tenant]
    by_number: Mapping[str, Tenant]
    by_account: Mapping[str, Tenant]

    @classmethod
    def of(cls, tenants: Mapping[str, Tenant]) -> PolicySet:
        by_number = {n: t for t in tenants.values() for n in t.numbers}
        accounts: dict[str, list[Tenant]] = {}
        for tenant in tenants.values():
            accounts.setdefault(tenant.account_sid, []).append(tenant)
        # Tenants may share one Twilio account; then the SID cannot pick a tenant, only a number can.
        by_account = {sid: owners[0] for sid, owners in accounts.items() if len(owners) == 1}
        return cls(dict(tenants), by_number, by_account)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A reload worked out off the loop, to be applied on it: the stamps it saw, and the new
    set or why not."""

    stamps: Mapping[str, Stamp]
    loaded: Loaded | None
    error: PolicyError | None


class Registry:
    """Holds the current PolicySet; a reload swaps it only when every file is valid.

    A reload is worked out by `prepare` (in a worker thread: it reads and validates files) and
    swapped in by `apply` (on the event loop: one assignment). Requests hold the PolicySet
    they started with, so a swap never changes a request half-way."""

    def __init__(self, directory: Path, context: LoadContext) -> None:
        self.directory = directory
        self.context = context
        self._stamps, self._loaded = load_set(directory, context)
        self.current = PolicySet.of({tenant.id: tenant for _, tenant in self._loaded.values()})
        # One reload at a time (the watcher's and SIGHUP's): each starts from the last applied.
        self.lock = asyncio.Lock()

    def prepare(self, full: bool = False) -> Prepared | None:
        """The next set, reading only the files whose stamp changed since the last reload (all
        of them when `full`: SIGHUP, for secrets and the files a policy names); None when no
        file changed since the last attempt (so a refused edit is reported once, not per poll)."""
        seen = stamps(self.directory)
        if not full and seen == self._stamps:
            return None
        try:
            _, loaded = load_set(self.directory, self.context, None if full else self._loaded, seen)
        except PolicyError as exc:
            return Prepared(seen, None, exc)
        return Prepared(seen, loaded, None)

    def apply(self, prepared: Prepared) -> PolicyError | None:
        """Swap in a prepared set (on the loop); on a refused one keep the current set."""
        self._stamps = prepared.stamps
        if prepared.loaded is None:
            return prepared.error
        self._loaded = prepared.loaded
        self.current = PolicySet.of({tenant.id: tenant for _, tenant in prepared.loaded.values()})
        return None

    def reload(self) -> PolicyError | None:
        """Load every file again, in this thread; on any problem keep the old set and return the error."""
        prepared = self.prepare(full=True)
        assert prepared is not None
        return self.apply(prepared)
