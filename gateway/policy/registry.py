"""The live set of tenants: lookups for the hot path, and an atomic swap on reload."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
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
    """A reload worked out off the loop, to be applied on it: the stamps it saw, the new set
    (None: the whole reload refused, e.g. the directory gone) and what was refused."""

    stamps: Mapping[str, Stamp]
    loaded: Loaded | None
    error: PolicyError | None
    # Built off the loop too: indexing 30,000 tenants by number is 20 ms the loop need not spend.
    current: PolicySet | None = None
    compiled: int = 0  # files compiled anew


class Registry:
    """Holds the current PolicySet. At start every file must be valid; on a reload a bad file
    keeps its tenant's last good policy (a new bad file stays out) and the rest goes live.

    A reload is worked out by `prepare` (in a worker thread: it reads and validates files) and
    swapped in by `apply` (on the event loop: one assignment). Requests hold the PolicySet
    they started with, so a swap never changes a request half-way."""

    def __init__(self, directory: Path, context: LoadContext, *, parallel: bool = False) -> None:
        self.directory = directory
        self.context = context
        # parallel: many files read by forked workers (start-up, while this process has one thread).
        first = load_set(directory, context, parallel=parallel)
        self._stamps, self._loaded = first.stamps, first.loaded
        self.current = PolicySet.of({tenant.id: tenant for _, _, tenant in self._loaded.values()})
        # One reload at a time (the watcher's and SIGHUP's): each starts from the last applied.
        self.lock = asyncio.Lock()
        self._listeners: list[Callable[[PolicySet, PolicySet], None]] = []

    def on_swap(self, listener: Callable[[PolicySet, PolicySet], None]) -> None:
        """Call `listener(old, new)` on the loop after each swap that changed the set (the
        metrics drop a removed tenant's series)."""
        self._listeners.append(listener)

    def prepare(self, full: bool = False) -> Prepared | None:
        """The next set, reading only the files whose stamp changed since the last reload (all
        of them when `full`: SIGHUP, for secrets and the files a policy names); None when no
        file changed since the last attempt (so a refused edit is reported once, not per poll)."""
        seen = stamps(self.directory)
        if not full and seen == self._stamps:
            return None
        try:
            result = load_set(self.directory, self.context, self._loaded, seen, reread=full)
        except PolicyError as exc:
            return Prepared(seen, None, exc)
        error = PolicyError(list(result.problems)) if result.problems else None
        if _same(result.loaded, self._loaded):
            current = self.current  # every change refused: requests keep the very same set
        else:
            current = PolicySet.of({tenant.id: tenant for _, _, tenant in result.loaded.values()})
        return Prepared(seen, result.loaded, error, current, result.compiled)

    def apply(self, prepared: Prepared) -> PolicyError | None:
        """Swap in a prepared set (on the loop: two assignments); return what it refused."""
        self._stamps = prepared.stamps
        if prepared.loaded is not None and prepared.current is not None:
            old, self._loaded, self.current = self.current, prepared.loaded, prepared.current
            if old is not self.current:
                for listener in self._listeners:
                    listener(old, self.current)
        return prepared.error

    def reload(self) -> PolicyError | None:
        """Load every file again, in this thread; return what was refused (those files keep
        their last good policy; the set is unchanged if the directory itself is refused)."""
        prepared = self.prepare(full=True)
        assert prepared is not None
        return self.apply(prepared)


def _same(new: Loaded, old: Loaded) -> bool:
    return new.keys() == old.keys() and all(new[name][2] is old[name][2] for name in new)
