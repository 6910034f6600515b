"""The collector paused while a policy set is built and the set frozen after; tenants hold no
cycles, so a replaced set is freed without the collector."""

from __future__ import annotations

import gc
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.policy import heap
from gateway.policy.loader import load_set
from tests.support.policies import FIXTURES
from tests.support.policies import PUBLIC as CONTEXT

LOADTEST = str(Path(__file__).resolve().parents[3] / "loadtest")
if LOADTEST not in sys.path:
    sys.path.insert(0, LOADTEST)

import tenants  # noqa: E402  (loadtest/ is a directory of scripts)


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector on, and nothing frozen by the test left frozen after it."""
    was = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_stops_the_collector_then_freezes_what_is_alive(collector: None) -> None:
    """Inside: no automatic collection; after: collection back on and the objects made frozen."""
    frozen = gc.get_freeze_count()
    with heap.paused():
        assert not gc.isenabled()
        kept = [[i] for i in range(1_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_nested_pauses_resume_the_collector_only_at_the_outermost(collector: None) -> None:
    """A pause inside a pause leaves the collector off until the outer one ends."""
    with heap.paused():
        with heap.paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_that_built_nothing_freezes_nothing(collector: None) -> None:
    """freeze=False (a reload that found no change): the young objects stay collectable."""
    gc.unfreeze()
    with heap.paused() as pause:
        pause.freeze = False
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_a_collector_already_off_stays_off(collector: None) -> None:
    """A process that turned the collector off itself finds it off after a pause."""
    gc.disable()
    with heap.paused():
        pass
    assert not gc.isenabled()


def test_loaded_tenants_hold_no_reference_cycles(tmp_path: Path, collector: None) -> None:
    """A loaded set, fixtures and generated tenants of every kind, dropped: the collector finds
    nothing unreachable, so reference counting alone frees a replaced set (frozen or not)."""
    directory = tmp_path / "policies"
    tenants.generate(directory, 60)
    for fixture in (FIXTURES / "valid").iterdir():
        shutil.copy(fixture, directory / fixture.name)
    context = type(CONTEXT)(env={**CONTEXT.env, tenants.TOKEN_ENV: tenants.TOKEN}, public_url=CONTEXT.public_url)
    gc.collect()
    gc.disable()
    loaded = load_set(directory, context)
    assert len(loaded.loaded) == 62
    del loaded
    assert gc.collect() == 0


def test_a_build_that_fails_freezes_nothing(collector: None) -> None:
    """A load that raises (a loader crash, a cancelled reload) leaves nothing frozen and the collector on."""
    gc.unfreeze()
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("loader bug")
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_freeze_false_up_front_until_the_caller_decides(collector: None) -> None:
    """paused(freeze=False) freezes only if the block sets pause.freeze (a reload that built a large set)."""
    gc.unfreeze()
    with heap.paused(freeze=False):
        pass
    assert gc.get_freeze_count() == 0
    with heap.paused(freeze=False) as pause:
        pause.freeze = True
    assert gc.get_freeze_count() > 0
