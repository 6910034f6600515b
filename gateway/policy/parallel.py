"""Many policy files read and compiled by forked worker processes, where that pays.

A policy file costs about 0.7 ms of Python (parse, validate, compile): 21 s at 30,000 tenants
in one process. Forked workers share nothing but the result, each chunk's tenants sent back
pickled; on 2 cores two workers load 3,000 files 2.2x faster than one process (measured, see
docs/benchmarks.md). Below PARALLEL_MIN files a pool costs more than it saves.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar, cast

log = logging.getLogger("switchyard.policy")

PARALLEL_MIN = 1_000  # files: fewer load faster in this process than a pool starts
CHUNK = 200  # files per task: large enough to amortise a round trip, small enough to balance

T = TypeVar("T")

# The job of the pool being run: forked workers inherit it (a closure cannot be pickled to them).
_job: Callable[[str], object] | None = None
_job_lock = threading.Lock()


def _forkable() -> bool:
    # Fork copies only the calling thread: a lock another thread holds at that moment stays
    # held for ever in the child. So the pool is used only while this process has one thread
    # (start-up, `check`), never from a running server's reload thread.
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def workers() -> int:
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)


def load_many(names: Sequence[str], one: Callable[[str], T], *, parallel: bool = True) -> list[tuple[str, T]]:
    """(name, one(name)) for each name, in order; `one` must catch its own expected errors and
    return them (they are pickled back). In forked workers when `parallel`, there are enough
    names and the process can fork; else here."""
    count = workers()
    if not parallel or len(names) < PARALLEL_MIN or count < 2 or not _forkable():
        return [(name, one(name)) for name in names]
    global _job
    out: list[tuple[str, T]] = []
    chunks = [list(names[i : i + CHUNK]) for i in range(0, len(names), CHUNK)]
    with _job_lock:
        _job = one
        try:
            with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_chunk, chunk) for chunk in chunks]
                for chunk, future in zip(chunks, futures, strict=True):
                    try:
                        results = cast(list[T], future.result())
                    except Exception as exc:  # e.g. a tenant that cannot be pickled back
                        log.debug("policy chunk loaded in-process (%s: %s)", type(exc).__name__, exc)
                        results = [one(name) for name in chunk]
                    out.extend(zip(chunk, results, strict=True))
        finally:
            _job = None
    return out


def _chunk(names: list[str]) -> list[object]:
    assert _job is not None
    return [_job(name) for name in names]
