"""Reloads the policy set when its files change (polled, worked out off the loop) or on SIGHUP;
a bad set never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.errors import PolicyError
from gateway.policy.registry import Registry

log = logging.getLogger("switchyard.policy")

OnResult = Callable[[bool], None]


def _ignore(_ok: bool) -> None:
    return None


async def reload_soon(
    registry: Registry, reason: str, on_result: OnResult = _ignore, *, full: bool = False
) -> bool | None:
    """A reload worked out in a worker thread and swapped in on the loop, which stays free to
    answer webhooks meanwhile (a full load of 10,000 files is seconds of parsing); None when no
    file changed. Never raises: a loader bug keeps the old set."""
    async with registry.lock:
        try:
            prepared = await asyncio.to_thread(registry.prepare, full)
        except Exception:
            # A loader bug must not kill the watcher or the SIGHUP handler: keep the old set.
            log.exception("policy reload (%s) crashed; the previous policies stay in force", reason)
            on_result(False)
            return False
        if prepared is None:
            return None
        error = registry.apply(prepared)
    ok = _report(registry, reason, error)
    on_result(ok)
    return ok


def _report(registry: Registry, reason: str, error: PolicyError | None) -> bool:
    if error is None:
        log.info("policies reloaded (%s): %d tenants", reason, len(registry.current.tenants))
        return True
    log.error("policy reload (%s) refused; the previous policies stay in force:\n%s", reason, error)
    return False


async def watch(registry: Registry, interval: float, on_result: OnResult = _ignore) -> None:
    """Every `interval` seconds, the files' stamps (read in a worker thread: at 10,000 files the
    listing and stats are 200 ms) and, when any changed, a reload of what changed."""
    while True:
        await asyncio.sleep(interval)
        await reload_soon(registry, "files changed", on_result)
