"""The switchyard DEMO runtime as a process: listen, say loudly what it is, and stop by itself.

dev.py starts it and then becomes the gateway (os.execve keeps the pid), so nobody is left to
stop it: it stops when its parent process goes away (its parent pid changes: the orphan is
adopted by init or a subreaper; works on Linux and macOS), and on SIGTERM or SIGINT (Ctrl+C
reaches the whole foreground process group, so both stop together). Not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from gateway.demo.runtime import BANNER

log = logging.getLogger("switchyard.demo")

EXIT_OK = 0
EXIT_CANNOT_LISTEN = 1
PARENT_POLL = 1.0  # seconds: how late the runtime may notice that the gateway has gone


async def watch_parent(
    parent: int, stop: asyncio.Event, interval: float = PARENT_POLL, getppid: Callable[[], int] = os.getppid
) -> None:
    """Set `stop` once this process's parent is no longer `parent`. Polled: no portable event
    says so (Linux's PR_SET_PDEATHSIG is Linux-only, and fires on the parent thread's exit)."""
    while not stop.is_set():
        if getppid() != parent:
            log.info("the gateway (pid %d) has gone: stopping", parent)
            stop.set()
            return
        await asyncio.sleep(interval)


async def serve(app: web.Application, host: str, port: int, parent: int | None) -> int:
    """Serve `app` on host:port until SIGTERM/SIGINT or until `parent` goes away; the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the banner: whoever waits for it may signal at once.
    for number in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C still ends it, less politely
            loop.add_signal_handler(number, stop.set)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        # asyncio's strerror repeats the address at length: the errno's own words say it all.
        reason = os.strerror(error.errno) if error.errno else str(error)
        log.error("%s: cannot listen on %s:%d: %s", BANNER, host, port, reason)
        await runner.cleanup()
        return EXIT_CANNOT_LISTEN
    bound = runner.addresses[0][1]
    log.warning(
        "%s: http://%s:%d (tenant runtimes: POST /<tenant>/voice|sms|status, echo agents: GET /<tenant>/stream "
        "(WebSocket); OpenAI stand-in: POST /v1/chat/completions; Twilio REST stand-in: /2010-04-01/Accounts/…)",
        BANNER, host, bound,
    )  # fmt: skip
    watcher = asyncio.create_task(watch_parent(parent, stop)) if parent is not None else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
    return EXIT_OK
