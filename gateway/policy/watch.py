"""Reloads the policy set when its files change (polled) or on SIGHUP; a bad set never replaces a good one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.policy.loader import policy_files
from gateway.policy.registry import Registry

log = logging.getLogger("switchyard.policy")

Snapshot = tuple[tuple[str, int, int], ...]
OnResult = Callable[[bool], None]


def _ignore(_ok: bool) -> None:
    return None


def snapshot(directory: Path) -> Snapshot:
    """Names, sizes and mtimes: any edit, addition or removal changes it."""
    try:
        entries = []
        for path in policy_files(directory):
            stat = path.stat()
            entries.append((path.name, stat.st_size, stat.st_mtime_ns))
        return tuple(entries)
    except OSError:
        return ()


def reload(registry: Registry, reason: str, on_result: OnResult = _ignore) -> bool:
    ok = _reload(registry, reason)
    on_result(ok)
    return ok


def _reload(registry: Registry, reason: str) -> bool:
    try:
        error = registry.reload()
    except Exception:
        # A loader bug must not kill the watcher or the SIGHUP handler: keep the old set.
        log.exception("policy reload (%s) crashed; the previous policies stay in force", reason)
        return False
    if error is None:
        log.info("policies reloaded (%s): %d tenants", reason, len(registry.current.tenants))
        return True
    log.error("policy reload (%s) refused; the previous policies stay in force:\n%s", reason, error)
    return False


async def watch(registry: Registry, interval: float, on_result: OnResult = _ignore) -> None:
    """Poll the directory every `interval` seconds; stat calls on a few files cost microseconds."""
    seen = snapshot(registry.directory)
    while True:
        await asyncio.sleep(interval)
        current = snapshot(registry.directory)
        if current != seen:
            seen = current
            reload(registry, "files changed", on_result)
