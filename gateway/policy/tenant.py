"""The runtime form of one tenant's policy: everything a request needs, computed at load."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.limits.base import Rule

Kind = Literal["voice", "sms", "status", "api"]
FailureMode = Literal["local", "open", "closed"]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with its regexes compiled and its reply rendered to bytes."""

    name: str
    kind: Literal["voice", "sms"]
    action: str
    reply: bytes
    fallback: bytes
    to: frozenset[str] | None = None
    from_: re.Pattern[str] | None = None
    body: re.Pattern[str] | None = None

    def matches(self, params: Mapping[str, list[str]]) -> bool:
        if self.to is not None and _first(params, "To") not in self.to:
            return False
        if self.from_ is not None and not self.from_.search(_first(params, "From")):
            return False
        return self.body is None or bool(self.body.search(_first(params, "Body")))


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


@dataclass(frozen=True, slots=True)
class ApiAuth:
    secret: bytes = field(repr=False)
    audience: str
    issuer: str | None


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant, ready to serve. Secrets are excluded from repr so they never reach a log."""

    id: str
    file: str
    account_sid: str
    keys: tuple[bytes, ...] = field(repr=False)
    numbers: frozenset[str]
    rules: Mapping[Kind, tuple[Rule, ...]]
    routes: tuple[CompiledRoute, ...]
    fallback: Mapping[Literal["voice", "sms"], bytes]
    refusal: Mapping[Literal["voice", "sms"], bytes]
    on_store_failure: FailureMode = "local"
    concurrent_calls: int | None = None
    concurrent_streams: int | None = None
    api: ApiAuth | None = None
