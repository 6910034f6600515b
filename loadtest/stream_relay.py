"""The streams benchmark's baseline: a bare aiohttp WebSocket relay that checks nothing.

Per accepted WebSocket, one client WebSocket to the upstream (one ClientSession, no limit on
its connections), and a task per direction pumping each frame on as it comes; when either side
closes, both are closed. No signature, no admission, no parse, no meter, no access log, uvloop:
what relaying a Media Stream costs in aiohttp itself, against the gateway's bridge.

    .venv/bin/python loadtest/stream_relay.py --port 8096 --upstream ws://127.0.0.1:8095/agent

Any path is relayed to --upstream; GET /healthz answers ok.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType, web

MAX_MESSAGE = 64 * 1024
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def pump(source: Socket, sink: Socket) -> None:
    async for message in source:
        if message.type is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await sink.send_bytes(message.data)


def create_app(upstream: str) -> web.Application:
    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)  # no cap on open streams
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as client:
            app[SESSION] = client
            yield

    async def relay(request: web.Request) -> web.WebSocketResponse:
        caller = web.WebSocketResponse(compress=False, max_msg_size=MAX_MESSAGE)
        await caller.prepare(request)
        try:
            runtime = await request.app[SESSION].ws_connect(upstream, compress=0, max_msg_size=MAX_MESSAGE)
        except (aiohttp.ClientError, OSError):
            await caller.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR)
            return caller
        pumps = {asyncio.create_task(pump(caller, runtime)), asyncio.create_task(pump(runtime, caller))}
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            with contextlib.suppress(Exception):
                await runtime.close()
            with contextlib.suppress(Exception):
                await caller.close()
        return caller

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/{path:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8096)
    parser.add_argument("--upstream", required=True, help="ws://host:port/path to relay to")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("stream_relay: uvloop missing, running on asyncio's loop", file=sys.stderr)
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
