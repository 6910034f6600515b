"""What every handler needs, opened once per process in app.py's cleanup_ctx."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth.public_url import PublicUrl
from gateway.clock import Clock, monotonic
from gateway.egress import Egress
from gateway.limits.base import Limiter
from gateway.policy.registry import Registry
from gateway.settings import Settings
from gateway.telemetry.metrics import Metrics


@dataclass(slots=True)
class Services:
    settings: Settings
    registry: Registry
    public_url: PublicUrl
    limits: Limiter
    metrics: Metrics = field(default_factory=Metrics)
    clock: Clock = monotonic
    egress: Egress | None = None  # None only in tests that build Services by hand
