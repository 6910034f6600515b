"""Prometheus metrics, in a registry of the app's own so tests and several apps do not collide."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.store_transitions = Counter(
            "switchyard_limit_store_transitions",
            "Changes of the shared limit store's state (to=degraded when it starts failing, to=healthy when back).",
            ["to"],
            registry=self.registry,
        )
        self.store_degraded = Gauge(
            "switchyard_limit_store_degraded",
            "1 while the shared limit store fails and each tenant's on_store_failure rule applies.",
            registry=self.registry,
        )
        self.live_instances = Gauge(
            "switchyard_live_instances",
            "Gateway instances seen heartbeating in the shared store (1 for memory://).",
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "switchyard_policy_reloads", "Policy reloads by outcome.", ["outcome"], registry=self.registry
        )

    def degraded(self, is_degraded: bool) -> None:
        self.store_transitions.labels(to="degraded" if is_degraded else "healthy").inc()
        self.store_degraded.set(1 if is_degraded else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
