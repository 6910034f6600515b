"""How many gateway instances share the Redis limits, for the `local` fallback to divide by.

Each instance heartbeats its member of the `sy:instances` ZSET (score = expiry). The last count
seen stays in memory, because it is needed exactly when Redis cannot be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable

from gateway.clock import Clock, Sleep
from gateway.errors import BackendError
from gateway.limits.redis_client import RedisClient, gate_of, guard, lua, now_arg

log = logging.getLogger(__name__)

INSTANCES_KEY = "sy:instances"
INSTANCES_SCRIPT = "redis_instances.lua"

Beat = Callable[[BackendError | None], None]
"""Told after each heartbeat: None when Redis answered, else the error."""


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class InstanceRegistry:
    """Heartbeats this instance every `interval` seconds; a member lives `ttl` seconds, so an
    instance is counted for up to `ttl` after it died (ttl > interval leaves room for a missed
    beat)."""

    def __init__(
        self,
        client: RedisClient,
        instance_id: str | None = None,
        *,
        ttl: float = 15.0,
        interval: float = 5.0,
        deadline: float = 0.050,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < interval < ttl:
            raise ValueError(f"instance registry needs 0 < interval < ttl, got {interval}, {ttl}")
        self.instance_id = instance_id or default_instance_id()
        self._client = client
        self._gate = gate_of(client)
        self._ttl = ttl
        self._interval = interval
        self._deadline = deadline
        self._clock = clock
        self._sleep = sleep
        self._script = client.register_script(lua(INSTANCES_SCRIPT))
        self._live = 1
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Beat] = []

    def on_beat(self, callback: Beat) -> None:
        """Tell `callback` how each heartbeat went: the store's pulse while no request asks it."""
        self._listeners.append(callback)

    def live_instances(self) -> int:
        """The last count Redis gave, at least 1 (this instance); never blocks."""
        return self._live

    async def heartbeat(self) -> int:
        """Renew this instance's member and refresh the count; BackendError if Redis fails."""
        self._live = max(1, await self._run(self._ttl))
        return self._live

    async def _run(self, ttl: float) -> int:
        now = now_arg(None if self._clock is None else self._clock())
        async with guard("instances", self._deadline, self._gate):
            reply = await self._script(
                keys=[INSTANCES_KEY], args=[now, self.instance_id, repr(ttl)], client=self._client
            )
        return int(reply)

    async def start(self) -> None:
        """Beat once now (a failure is logged, not raised), then every `interval` seconds."""
        if self._task is None:
            await self.beat()
            self._task = asyncio.create_task(self._loop())

    async def beat(self) -> None:
        """One heartbeat now: a failure is logged and told to the listeners, not raised."""
        failed: BackendError | None = None
        try:
            await self.heartbeat()
        except BackendError as error:
            failed = error
            log.warning("instance heartbeat failed, keeping %d live: %s", self._live, error)
        for callback in self._listeners:
            try:
                callback(failed)
            except Exception:
                log.exception("instance heartbeat listener failed")  # a metric hook must not stop the beat

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._interval)
            await self.beat()

    async def close(self) -> None:
        """Stop beating and leave the registry, so the others' share grows at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(BackendError):
            await self._run(0)
