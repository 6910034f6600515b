"""Small real servers for tests: an aiohttp app on 127.0.0.1, on a port the kernel picks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Start `app` on 127.0.0.1:0; its runner (to clean up) and the port it got."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


class Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


@asynccontextmanager
async def running(server: S) -> AsyncIterator[S]:
    """`server` (a stand-in runtime, model, OTLP receiver…) started for the block, stopped after it."""
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
