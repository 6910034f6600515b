"""`python -m gateway.demo [--port 8090] [--policies policies] [--parent PID]`: the switchyard
DEMO runtime (see gateway/demo/__init__.py). Not for production."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from gateway.demo import chat
from gateway.demo.process import serve
from gateway.demo.runtime import BANNER, create_app, tokens_from_policies

DEFAULT_PORT = 8090


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo", description=f"{BANNER}.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument(
        "--policies", type=Path, default=Path("policies"),
        help="the gateway's policy directory: each tenant's twilio.auth_token_env names its token (default policies)",
    )  # fmt: skip
    parser.add_argument(
        "--parent", type=int, default=None,
        help="stop when this process is no longer our parent (default: the parent we started under)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="demo-runtime: %(message)s", stream=sys.stderr)
    log = logging.getLogger("switchyard.demo")
    tokens, accounts, notes = tokens_from_policies(args.policies, os.environ)
    for note in notes:
        log.warning("%s", note)
    if chat.KEY_ENV not in os.environ:
        log.warning("%s is not set: the OpenAI stand-in refuses every key", chat.KEY_ENV)
    app = create_app(tokens, os.environ.get(chat.KEY_ENV, ""), accounts)
    parent = args.parent if args.parent is not None else os.getppid()
    return asyncio.run(serve(app, args.host, args.port, parent))


if __name__ == "__main__":
    sys.exit(main())
