"""The baseline: a bare aiohttp app that answers POST /twilio/voice with the bench TwiML.

It reads the body and answers the very bytes the gateway answers on the bench route, with no
check at all, on uvloop, with the access log off: what aiohttp itself costs per webhook.

    .venv/bin/python loadtest/bare_app.py --port 8090
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenario import SMS_PATH, VOICE_PATH, say_twiml

TWIML = say_twiml()
EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response />'


async def voice(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=TWIML, content_type="text/xml")


async def sms(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=EMPTY, content_type="text/xml")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post(VOICE_PATH, voice)
    app.router.add_post(SMS_PATH, sms)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        print("bare_app: uvloop missing, running on asyncio's loop", file=sys.stderr)
    web.run_app(create_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
