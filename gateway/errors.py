"""The few error types of the gateway. Each carries data; responses.py maps them to replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.limits.base import Decision


class SwitchyardError(Exception):
    """Base of every error the gateway raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong in one policy file: `acme.yaml: limits.webhooks.rate: must be > 0`."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class PolicyError(SwitchyardError):
    """One or more policy files are invalid; the last good policy set stays in force."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def __reduce__(self) -> tuple[type[PolicyError], tuple[list[PolicyProblem]]]:
        # Built from its problems again when pickled back from a loading worker (policy/parallel.py).
        return (PolicyError, (self.problems,))


class SignatureError(SwitchyardError):
    """A request did not carry a valid Twilio signature or API token (403/401)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ScopeError(SwitchyardError):
    """A valid API token without the scope an endpoint needs (403, RFC 6750 insufficient_scope)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"the token lacks scope {scope}")


class Refused(SwitchyardError):
    """A tenant's limit refused the request."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(f"limit {decision.rule.name!r} refused; retry after {decision.retry_after:.3f}s")


class AdmissionRefused(SwitchyardError):
    """A call-out's own admission refused the request: `limit` is "concurrent_streams" (the
    tenant's refusal TwiML answers) or "budget" (its budget refusal)."""

    def __init__(self, limit: str, detail: str = "") -> None:
        self.limit = limit
        self.detail = detail
        super().__init__(f"{limit}: {detail}" if detail else limit)


class BackendError(SwitchyardError):
    """A limit store (Redis) failed or was too slow; wrapped once where the adapter meets the driver."""

    def __init__(
        self, backend: str, operation: str, cause: BaseException | None = None, *, overloaded: bool = False
    ) -> None:
        self.backend = backend
        self.operation = operation
        self.cause = cause
        # The call never reached the store: it waited too long for a connection (back-pressure).
        # It fails this call over, but says nothing of the store's health (no breaker, no degraded).
        self.overloaded = overloaded
        detail = f": {type(cause).__name__}: {cause}" if cause else ""
        super().__init__(f"{backend} {operation} failed{detail}")


class UpstreamError(SwitchyardError):
    """A call out of the gateway (a tenant's runtime, OpenAI, Twilio REST) failed or answered
    something we cannot use; mapped once where the outbound seam meets the HTTP client.

    reason: timeout | deadline | connect | connection | too_large | status | invalid
    """

    def __init__(self, target: str, reason: str, status: int | None = None, detail: str = "") -> None:
        self.target = target
        self.reason = reason
        self.status = status
        self.detail = detail
        code = f" {status}" if status is not None else ""
        more = f": {detail}" if detail else ""
        super().__init__(f"{target}: {reason}{code}{more}")
