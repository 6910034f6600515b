"""Reloads the policies when their files change (file events, else a poll) or on SIGHUP, worked
out off the loop; a bad file keeps its tenant's last good policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Literal

from gateway.errors import PolicyError
from gateway.policy import heap
from gateway.policy.registry import Registry

log = logging.getLogger("switchyard.policy")

OnResult = Callable[[bool], None]
Mode = Literal["events", "poll"]

# After the first event, changes are gathered until the directory has been quiet this long (a
# ConfigMap update is a burst: a new directory, its files, a `..data` symlink swapped, the old
# directory removed) and reloaded once; never longer than DEBOUNCE_MS in all.
QUIET_MS = 50
DEBOUNCE_MS = 1_000


def _ignore(_ok: bool) -> None:
    return None


async def reload_soon(
    registry: Registry, reason: str, on_result: OnResult = _ignore, *, full: bool = False
) -> bool | None:
    """A reload worked out in a worker thread and swapped in on the loop, which stays free to
    answer webhooks meanwhile; None when no file changed. Never raises: a loader bug keeps the
    old set."""
    async with registry.lock:
        with heap.paused(freeze=False) as pause:  # no collector pass over the set being built
            try:
                with _loop_first():
                    prepared = await asyncio.to_thread(registry.prepare, full)
            except Exception:
                # A loader bug must not kill the watcher or the SIGHUP handler: keep the old set.
                log.exception("policy reload (%s) crashed; the previous policies stay in force", reason)
                on_result(False)
                return False
            if prepared is None:
                return None
            # Frozen only when a large new set goes live (policy/heap.py says why not always).
            pause.freeze = prepared.compiled >= FREEZE_MIN and prepared.current is not registry.current
            error = registry.apply(prepared)
        swapped = prepared.loaded is not None
    ok = _report(registry, reason, error, swapped)
    on_result(ok)
    return ok


# While a reload thread computes, the loop waits at most this long for the GIL each time it
# needs it (CPython's default is 5 ms: a webhook takes it several times, so a 30,000-file
# SIGHUP showed as 15-21 ms answers; at 0.5 ms they stay within a few). The thread's own work
# takes a little longer in return, a cost paid only while a reload runs.
RELOAD_SWITCH_INTERVAL = 0.0005
# A reload that compiled at least this many files freezes the new set (policy/heap.py).
FREEZE_MIN = 1_000

_switch_lock = threading.Lock()
_switching = [0, 0.0]  # reloads under way (several registries in one process: tests), interval before


@contextlib.contextmanager
def _loop_first() -> Iterator[None]:
    with _switch_lock:
        if _switching[0] == 0:
            _switching[1] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switching[1], RELOAD_SWITCH_INTERVAL))
        _switching[0] += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switching[0] -= 1
            if _switching[0] == 0:
                sys.setswitchinterval(_switching[1])


def _report(registry: Registry, reason: str, error: PolicyError | None, swapped: bool) -> bool:
    tenants = len(registry.current.tenants)
    if error is None:
        log.info("policies reloaded (%s): %d tenants", reason, tenants)
        return True
    if swapped:
        files = len({problem.file for problem in error.problems})
        log.error(
            "policy reload (%s): %d file(s) refused, each keeps its last good policy (a new file stays out); "
            "the other changes are live, %d tenants:\n%s",
            reason, files, tenants, error,
        )  # fmt: skip
    else:
        log.error("policy reload (%s) refused; the previous policies stay in force:\n%s", reason, error)
    return False


async def watch(
    registry: Registry,
    interval: float,
    on_result: OnResult = _ignore,
    *,
    mode: Mode = "events",
    stop: asyncio.Event | None = None,
) -> None:
    """Reload on the directory's file events (inotify, FSEvents … through watchfiles), or where
    there are none (the library missing, a file system without events, the watch limit reached)
    by polling the files' stamps every `interval` seconds. Either way, what changed is found
    from the stamps, so a ConfigMap's symlink swap is one change of the files it swaps."""
    stop = stop or asyncio.Event()
    if mode == "events":
        try:
            await _events(registry, on_result, stop)
            return
        except (ImportError, OSError, RuntimeError) as exc:
            log.warning("no file events for %s (%s); polling every %gs", registry.directory, exc, interval)
    await _poll(registry, interval, on_result, stop)


async def _events(registry: Registry, on_result: OnResult, stop: asyncio.Event) -> None:
    import watchfiles  # optional at run time: without it, the poll

    # Not recursive: a ConfigMap's files are symlinks through `..data`, whose swap is an event
    # here. No filter: editors' temporary files are skipped by the stamps, not the watcher.
    async for _changes in watchfiles.awatch(
        registry.directory,
        watch_filter=None,
        recursive=False,
        step=QUIET_MS,
        debounce=DEBOUNCE_MS,
        stop_event=stop,
        force_polling=None,  # WATCHFILES_FORCE_POLLING=1 (watchfiles' own knob) polls in its thread
    ):
        await reload_soon(registry, "files changed", on_result)


async def _poll(registry: Registry, interval: float, on_result: OnResult, stop: asyncio.Event) -> None:
    """Every `interval` seconds, the files' stamps (read in a worker thread: at 30,000 files the
    listing and stats are 0.3 s) and, when any changed, a reload of what changed."""
    while not stop.is_set():
        await asyncio.sleep(interval)
        if not stop.is_set():
            await reload_soon(registry, "files changed", on_result)
