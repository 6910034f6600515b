"""A plain aiohttp forwarding proxy: the `aiohttp-proxy` bench target.

Every request goes on to the upstream with its method, path, query, body and headers (less the
hop-by-hop ones, Host and Content-Length, which the client sets), over one keep-alive
ClientSession; the upstream's status, headers (less hop-by-hop, Date, Server) and body come
back. No checks, no access log, uvloop: what forwarding alone costs in aiohttp, against nginx's
`proxy_pass` to the same upstream.

    .venv/bin/python loadtest/aiohttp_proxy.py --port 8091 --upstream http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

# RFC 9110 §7.6.1 and the classic RFC 2616 list: meaningful for one connection only.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}  # the client sets both
NOT_RETURNED = HOP_BY_HOP | {"content-length", "date", "server"}  # the server sets these
CONNECTIONS = 100  # as the gateway's egress (limit_per_host): above wrk's 64
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def kept(headers: Iterable[tuple[str, str]], dropped: frozenset[str] | set[str]) -> CIMultiDict[str]:
    return CIMultiDict((name, value) for name, value in headers if name.lower() not in dropped)


def create_app(upstream: str) -> web.Application:
    upstream = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        # auto_decompress off: the body goes back as it came.
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as client:
            app[SESSION] = client
            yield

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = kept(request.headers.items(), NOT_FORWARDED)
        try:
            async with request.app[SESSION].request(
                request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
            ) as response:
                answer = await response.read()
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"upstream: {type(exc).__name__}\n")
        return web.Response(status=response.status, headers=kept(response.headers.items(), NOT_RETURNED), body=answer)

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--upstream", required=True, help="http://host:port to forward to")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("aiohttp_proxy: uvloop missing, running on asyncio's loop", file=sys.stderr)
    web.run_app(create_app(args.upstream), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
