"""Prometheus metrics from batches of finished requests: values, labels bounded by the policies,
and with several processes one sum of all of them."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway.exchange import Exchange
from gateway.limits.base import Decision, Rule
from gateway.policy.registry import PolicySet
from gateway.telemetry import metrics as metrics_module
from gateway.telemetry.metrics import DURATION_BUCKETS, MULTIPROC_ENV, Finished, Metrics
from tests.support.clock import FakeClock
from tests.support.tenants import bare_tenant

ROOT = Path(__file__).resolve().parents[3]
WEBHOOKS = Rule("webhooks", rate=50, per=1, burst=100)


ACME = bare_tenant("acme")
BISTRO = bare_tenant("bistro")
POLICIES = PolicySet.of({"acme": ACME, "bistro": BISTRO})


def _exchange(clock: FakeClock, kind: str = "voice", **fields: object) -> Exchange:
    exchange = Exchange(kind, POLICIES, clock)
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def _limit(allowed: bool, rule: Rule = WEBHOOKS) -> Decision:
    return Decision(
        allowed=allowed, remaining=7 if allowed else 0, retry_after=0.0 if allowed else 1.0, reset=2.0, rule=rule
    )


def _series(text: bytes, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Samples called `name` in an exposition, keyed by the values of `labels` in that order."""
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name:
                key = tuple(sample.labels[label] for label in labels)
                assert key not in found, f"{name}{sample.labels} twice"
                found[key] = sample.value
    return found


def series(metrics: Metrics, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Samples called `name` in `metrics.render()`, keyed by the values of `labels`."""
    return _series(metrics.render(), name, *labels)


def test_a_batch_is_counted_by_tenant_kind_decision_and_status(clock: FakeClock) -> None:
    """Each request counts once under its tenant, kind, decision and status."""
    metrics = Metrics()
    answered = _exchange(clock, tenant=ACME, decision="answered")
    refused = _exchange(clock, tenant=ACME, decision="refused")
    sms = _exchange(clock, "sms", tenant=BISTRO, decision="answered")
    metrics.observe([(200, 0.002, answered), (200, 0.004, answered), (200, 0.001, refused), (200, 0.1, sms)])
    metrics.observe([(403, 0.001, _exchange(clock, tenant=ACME, decision="forged"))])
    assert series(metrics, "switchyard_requests_total", "tenant", "kind", "decision", "status") == {
        ("acme", "voice", "answered", "200"): 2,
        ("acme", "voice", "refused", "200"): 1,
        ("bistro", "sms", "answered", "200"): 1,
        ("acme", "voice", "forged", "403"): 1,
    }


def test_no_tenant_and_no_decision_have_labels_of_their_own(clock: FakeClock) -> None:
    """A request that named no tenant counts as "unknown"; one that reached no decision as "none"."""
    metrics = Metrics()
    metrics.observe([(200, 0.001, _exchange(clock, decision="unknown-tenant")), (400, 0.001, _exchange(clock))])
    assert series(metrics, "switchyard_requests_total", "tenant", "decision", "status") == {
        ("unknown", "unknown-tenant", "200"): 1,
        ("unknown", "none", "400"): 1,
    }


def test_a_client_that_left_is_counted_as_499(clock: FakeClock) -> None:
    """Whatever status was built, a request whose client left counts as 499, as its access line says."""
    metrics = Metrics()
    metrics.observe([(200, 0.5, _exchange(clock, tenant=ACME, decision="client_closed"))])
    assert series(metrics, "switchyard_requests_total", "decision", "status") == {("client_closed", "499"): 1}


def test_random_request_values_make_one_series(clock: FakeClock) -> None:
    """A thousand tenant-less requests with random numbers, SIDs, errors and durations: one "unknown" series."""
    rng = random.Random(7)

    def noise() -> str:
        return "".join(rng.choices("0123456789abcdef+/%\n", k=rng.randint(1, 40)))

    batch: list[Finished] = [
        (200, rng.uniform(0, 20), _exchange(clock, caller=noise(), called=noise(), sid=noise(), error=noise()))
        for _ in range(1000)
    ]
    metrics = Metrics()
    metrics.observe(batch[:500])
    metrics.observe(batch[500:])
    assert series(metrics, "switchyard_requests_total", "tenant", "kind", "decision", "status") == {
        ("unknown", "voice", "none", "200"): 1000
    }
    assert series(metrics, "switchyard_request_duration_seconds_count", "kind") == {("voice",): 1000}


def test_durations_fall_in_their_buckets(clock: FakeClock) -> None:
    """Each duration counts in the first bucket whose bound it does not exceed (bounds inclusive)."""
    metrics = Metrics()
    durations = [0.0004, 0.0005, 0.0006, 0.3, 15.0, 20.0]
    metrics.observe([(200, seconds, _exchange(clock)) for seconds in durations])
    metrics.observe([(200, 0.002, _exchange(clock, "sms"))])
    buckets = series(metrics, "switchyard_request_duration_seconds_bucket", "kind", "le")
    assert buckets[("voice", "0.0005")] == 2
    assert buckets[("voice", "0.001")] == 3
    assert buckets[("voice", "0.25")] == 3
    assert buckets[("voice", "0.5")] == 4
    assert buckets[("voice", "15.0")] == 5
    assert buckets[("voice", "+Inf")] == 6
    assert buckets[("sms", "0.001")] == 0 and buckets[("sms", "0.0025")] == 1
    assert series(metrics, "switchyard_request_duration_seconds_sum", "kind")[("voice",)] == pytest.approx(
        sum(durations)
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(DURATION_BUCKETS), st.floats(0, 30)), max_size=60))
def test_bucket_counts_match_prometheus_clients_own_observe(durations: list[float]) -> None:
    """Counting per bucket through the histogram's internals gives what observe() one by one gives."""
    clock = FakeClock()
    metrics = Metrics()
    metrics.observe([(200, seconds, _exchange(clock)) for seconds in durations])
    registry = CollectorRegistry()
    reference = Histogram(
        "switchyard_request_duration_seconds", "x", ["kind"], buckets=DURATION_BUCKETS, registry=registry
    )
    for seconds in durations:
        reference.labels("voice").observe(seconds)
    if not durations:
        reference.remove("voice")
    for suffix in ("_bucket", "_count"):
        name = "switchyard_request_duration_seconds" + suffix
        assert series(metrics, name, "kind", "le" if suffix == "_bucket" else "kind") == _series(
            generate_latest(registry), name, "kind", "le" if suffix == "_bucket" else "kind"
        )
    sums = series(metrics, "switchyard_request_duration_seconds_sum", "kind")
    assert sums == pytest.approx(_series(generate_latest(registry), "switchyard_request_duration_seconds_sum", "kind"))


def test_limit_decisions_by_bucket_and_outcome(clock: FakeClock) -> None:
    """Each charged request counts under the bucket that decided, allowed "true" or "false"."""
    voice = Rule("voice", rate=1, per=1, burst=1)
    metrics = Metrics()
    metrics.observe(
        [
            (200, 0.001, _exchange(clock, tenant=ACME, limit=_limit(True))),
            (200, 0.001, _exchange(clock, tenant=ACME, limit=_limit(True))),
            (200, 0.001, _exchange(clock, tenant=ACME, limit=_limit(False, voice))),
            (429, 0.001, _exchange(clock, "api", tenant=BISTRO, limit=_limit(False))),
            (403, 0.001, _exchange(clock, tenant=ACME)),  # refused before any bucket: not a decision
        ]
    )
    assert series(metrics, "switchyard_limit_decisions_total", "tenant", "bucket", "allowed") == {
        ("acme", "webhooks", "true"): 2,
        ("acme", "voice", "false"): 1,
        ("bistro", "webhooks", "false"): 1,
    }


def test_spend_is_summed_per_part_in_dollars(clock: FakeClock) -> None:
    """Cost parts in micro-dollars add up per tenant and part, exported in dollars."""
    metrics = Metrics()
    metrics.observe(
        [
            (200, 0.001, _exchange(clock, tenant=ACME, cost={"webhook": 100, "voice": 8500})),
            (200, 0.001, _exchange(clock, tenant=ACME, cost={"webhook": 100})),
            (200, 0.001, _exchange(clock, "sms", tenant=BISTRO, cost={"sms": 15800, "llm": 33})),
            (200, 0.001, _exchange(clock, tenant=BISTRO, cost={})),  # free: nothing to add
        ]
    )
    metrics.observe([(200, 0.001, _exchange(clock, tenant=ACME, cost={"webhook": 100}))])
    spend = series(metrics, "switchyard_spend_usd_total", "tenant", "part")
    assert spend == pytest.approx(
        {
            ("acme", "webhook"): 0.0003,
            ("acme", "voice"): 0.0085,
            ("bistro", "sms"): 0.0158,
            ("bistro", "llm"): 0.000033,
        }
    )


def test_budget_remaining_keeps_the_last_figure(clock: FakeClock) -> None:
    """The budget gauge holds each tenant's last reading."""
    metrics = Metrics()
    metrics.budget_remaining("acme", 12.5)
    metrics.budget_remaining("acme", 12.25)
    metrics.budget_remaining("bistro", 0.0)
    assert series(metrics, "switchyard_budget_remaining_usd", "tenant") == {("acme",): 12.25, ("bistro",): 0.0}


def test_budget_remaining_none_drops_the_old_figure() -> None:
    """No figure for today (a new day, no reply yet) removes the tenant's gauge instead of keeping yesterday's."""
    metrics = Metrics()
    metrics.budget_remaining("acme", 3.0)
    metrics.budget_remaining("bistro", 1.0)
    metrics.budget_remaining("acme", None)
    metrics.budget_remaining("carol", None)  # never set: nothing to drop, no error
    assert series(metrics, "switchyard_budget_remaining_usd", "tenant") == {("bistro",): 1.0}


def test_spenders_are_the_budgeted_tenants_whose_requests_cost(clock: FakeClock) -> None:
    """Only a budgeted tenant with a request that cost is a spender: the gauges never read the others."""
    metrics = Metrics()
    budgeted = dataclasses.replace(ACME, daily_budget=5_000_000)
    free = _exchange(clock, tenant=budgeted, decision="answered")  # no cost
    paid = _exchange(clock, tenant=budgeted, decision="answered", cost={"webhook": 100})
    unbudgeted = _exchange(clock, tenant=BISTRO, decision="answered", cost={"webhook": 100})
    metrics.observe([(200, 0.001, free), (200, 0.001, unbudgeted)])
    assert metrics.spenders == set()
    metrics.observe([(200, 0.001, paid)])
    assert metrics.spenders == {"acme"}


def test_forget_drops_every_series_of_the_removed_tenants(clock: FakeClock) -> None:
    """A removed tenant's requests, limits, spend, budget and stream series all go; the others'
    stay; a stream gauge still open stays until it reads 0 (its end would make it anew at -1)."""
    metrics = Metrics()
    for tenant in (ACME, BISTRO):
        exchange = _exchange(clock, tenant=tenant, decision="answered", limit=_limit(True), cost={"webhook": 100})
        metrics.observe([(200, 0.001, exchange)])
        metrics.budget_remaining(tenant.id, 1.0)
        metrics.streams_open.labels(tenant.id).set(1)
        metrics.stream_ends.labels(tenant.id, "stop").inc()
        metrics.status_forwards.labels(tenant.id, "delivered").inc()
    metrics.spenders.add("acme")
    assert metrics.forget(["acme"]) == 6
    assert series(metrics, "switchyard_streams_open", "tenant") == {("acme",): 1, ("bistro",): 1}
    metrics.streams_open.labels("acme").dec()
    assert metrics.forget(["acme"]) == 1
    text = metrics.render()
    assert b'tenant="acme"' not in text
    assert text.count(b'tenant="bistro"') >= 7
    assert metrics.spenders == set()
    assert metrics.forget([]) == 0


def test_a_removed_tenants_series_made_anew_go_at_the_next_reconcile(clock: FakeClock) -> None:
    """Series a request in flight at the swap makes afterwards are dropped by reconcile, for
    GONE_WATCH seconds; a tenant that comes back keeps its new series."""
    metrics = Metrics()
    metrics.observe([(200, 0.001, _exchange(clock, tenant=ACME, decision="answered"))])
    metrics.tenants_changed(["acme", "bistro"], ["bistro"], now=100.0)
    metrics.observe([(200, 0.001, _exchange(clock, tenant=ACME, decision="answered"))])  # flushed late
    assert metrics.reconcile(now=110.0) == 1
    assert b'tenant="acme"' not in metrics.render()
    metrics.tenants_changed(["bistro"], ["acme", "bistro"], now=120.0)  # back
    metrics.observe([(200, 0.001, _exchange(clock, tenant=ACME, decision="answered"))])
    assert metrics.reconcile(now=130.0) == 0
    assert b'tenant="acme"' in metrics.render()
    metrics.tenants_changed(["acme", "bistro"], ["bistro"], now=200.0)
    assert metrics.reconcile(now=200.0 + metrics_module.GONE_WATCH + 1) == 0  # watched long enough
    metrics.observe([(200, 0.001, _exchange(clock, tenant=ACME, decision="answered"))])
    assert metrics.reconcile(now=200.0 + metrics_module.GONE_WATCH + 2) == 0


async def test_concurrent_scrapes_share_one_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrapes that arrive while one renders (off the loop) get its text; the next scrape renders anew."""
    metrics = Metrics()
    renders: list[int] = []
    real = metrics._render

    def counted() -> bytes:
        renders.append(1)
        return real()

    monkeypatch.setattr(metrics, "_render", counted)
    first, second = await asyncio.gather(metrics.scrape(), metrics.scrape())
    assert first is second and len(renders) == 1
    metrics.policy_reloads.labels(outcome="ok").inc()
    third = await metrics.scrape()
    assert len(renders) == 2
    assert _series(third, "switchyard_policy_reloads_total", "outcome") == {("ok",): 1}


async def test_a_scrape_renders_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exposition is built in a worker thread: the loop keeps answering while it renders."""
    metrics = Metrics()
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = metrics._render

    def where() -> bytes:
        threads.append(threading.get_ident())
        return real()

    monkeypatch.setattr(metrics, "_render", where)
    await metrics.scrape()
    assert threads and threads[0] != loop_thread


def test_dropped_spans_by_reason_start_at_zero() -> None:
    """Every drop reason is exported from the start, and counts what it is told."""
    metrics = Metrics()
    zero = {("queue_full",): 0, ("export_failed",): 0, ("shutdown",): 0}
    assert series(metrics, "switchyard_spans_dropped_total", "reason") == zero
    metrics.spans_dropped(3, "queue_full")
    metrics.spans_dropped(2, "queue_full")
    metrics.spans_dropped(1, "export_failed")
    assert series(metrics, "switchyard_spans_dropped_total", "reason") == {
        **zero,
        ("queue_full",): 5,
        ("export_failed",): 1,
    }


def test_live_instances_are_read_at_each_scrape() -> None:
    """count_instances' source is asked at every render, never in between."""
    counts = iter([1, 3])
    asked: list[int] = []

    def source() -> int:
        asked.append(n := next(counts))
        return n

    metrics = Metrics()
    metrics.count_instances(source)
    assert asked == []
    assert series(metrics, "switchyard_live_instances") == {(): 1}
    assert series(metrics, "switchyard_live_instances") == {(): 3}


def test_existing_metrics_keep_their_names() -> None:
    """Store transitions and degraded state, told apart for the limiter and the ledger, and policy
    reloads are exported under their names."""
    metrics = Metrics()
    metrics.degraded("budget", True)
    metrics.degraded("budget", False)
    metrics.degraded("limits", True)
    metrics.policy_reloads.labels(outcome="ok").inc()
    assert series(metrics, "switchyard_limit_store_transitions_total", "part", "to") == {
        ("budget", "degraded"): 1,
        ("budget", "healthy"): 1,
        ("limits", "degraded"): 1,
    }
    assert series(metrics, "switchyard_limit_store_degraded", "part") == {("budget",): 0, ("limits",): 1}
    assert series(metrics, "switchyard_policy_reloads_total", "outcome") == {("ok",): 1}


# Runs in a process of its own: prometheus_client picks mmap values at import, from the environment.
WORKER = """\
import sys
from gateway.exchange import Exchange
from gateway.policy.registry import PolicySet
from gateway.telemetry.metrics import Metrics
from tests.support.clock import FakeClock

requests, seconds, budget, live = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
metrics = Metrics()
exchange = Exchange("voice", PolicySet.of({}), FakeClock())
exchange.decision = "answered"
metrics.observe([(200, seconds, exchange)] * requests)
metrics.budget_remaining("acme", budget)
if live:
    metrics.live_instances.set(live)
print(metrics.render().decode(), end="")
"""


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "metrics"
    directory.mkdir()
    return directory


def _process(directory: Path, *args: object) -> tuple[int, bytes]:
    """Run WORKER in a process of its own sharing `directory`; its pid and what it rendered.
    Arguments: requests, seconds each, budget left, live instances (0: not set)."""
    env = {**os.environ, MULTIPROC_ENV: str(directory)}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, *map(str, args)], stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return process.pid, out


def test_processes_sharing_a_directory_render_one_sum(multiproc_dir: Path) -> None:
    """Two processes' counts add up in either one's render; gauges take the newest reading."""
    _process(multiproc_dir, 3, 0.002, 5.0, 2)
    _, text = _process(multiproc_dir, 2, 0.3, 4.5, 3)
    assert _series(text, "switchyard_requests_total", "tenant", "decision") == {("unknown", "answered"): 5}
    buckets = _series(text, "switchyard_request_duration_seconds_bucket", "le")
    assert (buckets[("0.001",)], buckets[("0.0025",)], buckets[("0.25",)], buckets[("0.5",)]) == (0, 3, 3, 5)
    assert _series(text, "switchyard_budget_remaining_usd", "tenant") == {("acme",): 4.5}
    assert _series(text, "switchyard_live_instances") == {(): 3}
    assert _series(text, "switchyard_limit_store_degraded", "part") == {("budget",): 0, ("limits",): 0}
    assert not any(path.name.endswith(f"_{os.getpid()}.db") for path in multiproc_dir.iterdir())


def test_a_process_that_exited_leaves_the_live_gauges_not_the_counts(multiproc_dir: Path) -> None:
    """After process_exited, its instance count is gone from the live gauge; its requests still count."""
    _process(multiproc_dir, 3, 0.002, 5.0, 2)
    second, _ = _process(multiproc_dir, 2, 0.002, 4.5, 3)
    metrics_module.process_exited(second, str(multiproc_dir))
    _, text = _process(multiproc_dir, 0, 0.002, 4.0, 0)
    assert _series(text, "switchyard_requests_total", "tenant", "decision") == {("unknown", "answered"): 5}
    assert _series(text, "switchyard_live_instances") == {(): 2}
    assert _series(text, "switchyard_budget_remaining_usd", "tenant") == {("acme",): 4.0}


def test_the_metrics_reference_names_every_series() -> None:
    """docs/metrics.md lists every metric the gateway exports, under its exported name."""
    reference = (Path(__file__).resolve().parents[3] / "docs" / "metrics.md").read_text()
    metrics = Metrics()
    names = [
        value._name + ("_total" if value._type == "counter" else "")
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    ]
    assert names and [name for name in names if f"`{name}`" not in reference] == []
