"""The app's background loops: the budget gauges read only the tenants that spent, from a
shared ledger's replies, and give the loop its turns; idle state is swept on a timer."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway import app
from gateway.limits.budget import utc_day
from gateway.policy.registry import PolicySet
from gateway.policy.tenant import Tenant
from gateway.services import Services
from gateway.telemetry.metrics import Metrics
from tests.support.tenants import bare_tenant

WALL = 1_800_000_000.0
DAY = utc_day(WALL)


def _tenant(tenant_id: str, budget: int | None) -> Tenant:
    return bare_tenant(tenant_id, daily_budget=budget)


class SharedLedger:
    """A shared ledger as the gauges see it: totals from replies, and a spend() never to be read."""

    shared = True

    def __init__(self, totals: dict[str, int]) -> None:
        self.totals = totals

    def last_seen(self, tenant: str, day: str) -> int | None:
        return self.totals.get(tenant) if day == DAY else None

    async def spend(self, tenant: str, day: str) -> Any:
        raise AssertionError("a shared ledger's spend was read for a gauge")


def _services(tenants: list[Tenant], ledger: object, metrics: Metrics) -> Services:
    registry = SimpleNamespace(current=PolicySet.of({t.id: t for t in tenants}))
    return cast(Services, SimpleNamespace(ledger=ledger, metrics=metrics, registry=registry, wall=lambda: WALL))


async def _one_cycle(services: Services, loop_turns: list[int] | None = None) -> None:
    """Run the gauges until they sleep for their interval (their first cycle done), then stop them."""
    done = asyncio.Event()
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        if delay == app.BUDGET_GAUGE_INTERVAL:
            done.set()
            await asyncio.Event().wait()
        await real_sleep(delay)

    async def count_turns() -> None:
        while not done.is_set():
            assert loop_turns is not None
            loop_turns.append(1)
            await real_sleep(0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", sleep)
        gauges = asyncio.create_task(app._budget_gauges(services))
        counter = asyncio.create_task(count_turns()) if loop_turns is not None else None
        await done.wait()
        gauges.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gauges
        if counter is not None:
            await counter


def _gauges(metrics: Metrics) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["tenant"]: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "switchyard_budget_remaining_usd"
    }


async def test_a_shared_ledgers_gauges_come_from_its_replies() -> None:
    """Spenders with a figure today get cap - total; one with no reply today has no gauge; a
    tenant no longer budgeted (or removed) stops being a spender."""
    metrics = Metrics()
    tenants = [_tenant("acme", 5_000_000), _tenant("bistro", 2_000_000), _tenant("free", None)]
    metrics.spenders.update({"acme", "bistro", "free", "gone"})
    metrics.budget_remaining("bistro", 9.0)  # yesterday's figure
    await _one_cycle(_services(tenants, SharedLedger({"acme": 1_250_000}), metrics))
    assert _gauges(metrics) == {"acme": 3.75}
    assert metrics.spenders == {"acme", "bistro"}


async def test_the_gauges_give_the_loop_turns_while_many_tenants_spend() -> None:
    """3,000 spenders in one cycle: other tasks run between the gauges' batches, not after one long pass."""
    metrics = Metrics()
    tenants = [_tenant(f"t{i:05d}", 1_000_000) for i in range(3_000)]
    metrics.spenders.update(t.id for t in tenants)
    turns: list[int] = []
    await _one_cycle(_services(tenants, SharedLedger({t.id: 0 for t in tenants}), metrics), turns)
    assert len(_gauges(metrics)) == 3_000
    assert len(turns) >= 3_000 // app.GAUGES_PER_TURN


async def test_the_sweep_runs_on_its_timer() -> None:
    """Each SWEEP_INTERVAL the stores' sweep is called, with no request needed."""
    calls: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        calls.append(delay)
        if len(calls) > 3:
            await asyncio.Event().wait()
        await real_sleep(0)

    swept: list[int] = []

    def sweep() -> int:
        swept.append(1)
        return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", sleep)
        task = asyncio.create_task(app._sweep(sweep))
        while len(calls) <= 3:
            await real_sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert calls[:3] == [app.SWEEP_INTERVAL] * 3 and len(swept) == 3


async def test_a_tenant_removed_during_a_cycle_gets_no_gauge_again() -> None:
    """A swap that removes a spender while the gauges yield: its gauge is not made anew from the
    cycle's old snapshot of the tenants."""
    metrics = Metrics()
    tenants = [_tenant(f"t{i:05d}", 1_000_000) for i in range(2 * app.GAUGES_PER_TURN)]
    metrics.spenders.update(t.id for t in tenants)
    services = _services(tenants, SharedLedger({t.id: 0 for t in tenants}), metrics)
    last = tenants[-1].id
    real_sleep = asyncio.sleep

    async def remove_then_go_on() -> None:
        await real_sleep(0)
        metrics.forget([last])  # what the swap's listener does

    remover = asyncio.create_task(remove_then_go_on())
    await _one_cycle(services)
    await remover
    assert last not in _gauges(metrics)
