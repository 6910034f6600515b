"""The live set of tenants: lookups for the hot path, and an atomic swap on reload."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import PolicyError
from gateway.policy.loader import LoadContext, load_dir
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


class Registry:
    """Holds the current PolicySet; `reload` swaps it only when every file is valid."""

    def __init__(self, directory: Path, context: LoadContext) -> None:
        self.directory = directory
        self.context = context
        self.current = PolicySet.of(load_dir(directory, context))

    def reload(self) -> PolicyError | None:
        """Load every file again; on any problem keep the old set and return the error."""
        try:
            tenants = load_dir(self.directory, self.context)
        except PolicyError as exc:
            return exc
        self.current = PolicySet.of(tenants)
        return None
