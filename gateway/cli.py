"""`switchyard serve | check | sign | token | explain`: argument parsing, and the process model of `serve`."""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from multiprocessing import connection, resource_tracker
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from gateway.auth.public_url import PublicUrl
from gateway.errors import PolicyError, PolicyProblem
from gateway.limits.budget import Spend
from gateway.limits.factory import is_shared
from gateway.policy.loader import LoadContext, load_dir
from gateway.policy.tenant import Tenant
from gateway.settings import Settings, SettingsError, from_env, public_urls_from_env
from gateway.telemetry import metrics
from gateway.telemetry.accesslog import configure_logging

if TYPE_CHECKING:
    from aiohttp import web

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description="Edge gateway for Twilio webhooks.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--policies", type=Path, help="policy directory (default: policies)")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: 8080)")
    serve.add_argument(
        "--limiter",
        help="limit store: memory:// (default), redis://host:port/db, rediss://…, redis+cluster://host:port",
    )
    serve.add_argument(
        "--public-url",
        action="append",
        metavar="URL",
        help="a base URL Twilio calls, e.g. https://gw.example.com (signatures are checked against it; repeatable, "
        "the request's Host chooses among several)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="CIDR",
        help="peer allowed to set X-Forwarded-Proto/Host (repeatable)",
    )
    serve.add_argument("--workers", type=int, help="processes sharing the port (needs a shared --limiter)")
    serve.add_argument("--no-access-log", action="store_true", help="no JSON line per request")
    serve.add_argument("--reload-interval", type=float, help="seconds between policy file checks; 0 = only on SIGHUP")
    serve.add_argument(
        "--grace-period",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long requests in flight may take before they are cut (default: 10)",
    )
    serve.add_argument(
        "--stream-lease-ttl",
        type=float,
        metavar="SECONDS",
        help="a media stream's slot is renewed every third of this; a dead instance's are free after it (default: 30)",
    )

    check = commands.add_parser("check", help="validate a policy directory; list every error")
    check.add_argument("directory", type=Path, nargs="?", default=Path("policies"))
    check.add_argument("--ignore-env", action="store_true", help="do not require the secrets' environment variables")
    check.add_argument(
        "--public-url",
        action="append",
        metavar="URL",
        help="as for serve (default: $SWITCHYARD_PUBLIC_URL); without it, a stream route without a url is a note",
    )

    sign = commands.add_parser("sign", help="print a curl command carrying a valid X-Twilio-Signature")
    sign.add_argument("--tenant", required=True)
    sign.add_argument(
        "--url", required=True, help="the full URL to call, as Twilio would, e.g. http://127.0.0.1:8080/twilio/voice"
    )
    sign.add_argument("--policies", type=Path, default=Path("policies"))
    sign.add_argument("--public-url", help="as for serve (default: the scheme and host of --url)")
    sign.add_argument("params", nargs="*", metavar="key=value")

    token = commands.add_parser("token", help="print an API token (JWT) for a tenant with an HS256 key")
    token.add_argument("--tenant", required=True)
    token.add_argument("--policies", type=Path, default=Path("policies"))
    token.add_argument(
        "--scope", action="append", default=[], metavar="SCOPE",
        help=(
            "a scope to grant: calls:write, messages:write, cost:read (repeatable). None: a token without"
            " a scope claim, which reaches every endpoint unless the tenant's api.require_scopes is set"
        ),
    )  # fmt: skip
    token.add_argument("--ttl", type=int, default=3600, help="seconds it is valid (default 3600)")

    explain = commands.add_parser(
        "explain", help="which route, action, deadline, buckets and budget a webhook gets; calls nothing"
    )
    explain.add_argument("--tenant", required=True)
    explain.add_argument("--policies", type=Path, default=Path("policies"))
    explain.add_argument(
        "--public-url", help="the gateway's public URL (default: $SWITCHYARD_PUBLIC_URL or http://127.0.0.1:8080)"
    )
    explain.add_argument("--limiter", help="read today's spend from this store (redis://…); default: not read")
    explain.add_argument(
        "params", nargs="*", metavar="key=value", help="kind=voice|sms|status, then the form, e.g. To=+1555…"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args.directory, os.environ, ignore_env=args.ignore_env, public_urls=args.public_url or ())
    if args.command == "sign":
        return sign(args.tenant, args.url, args.params, args.policies, os.environ, args.public_url)
    if args.command == "token":
        return token(args.tenant, args.policies, os.environ, tuple(args.scope), args.ttl)
    if args.command == "explain":
        return explain(args.tenant, args.params, args.policies, os.environ, args.public_url, args.limiter)
    try:
        settings = from_env(
            os.environ,
            policies_dir=args.policies,
            host=args.host,
            port=args.port,
            limiter_url=args.limiter,
            public_urls=tuple(args.public_url) if args.public_url else None,
            trusted_proxies=tuple(args.trusted_proxy) if args.trusted_proxy else None,
            workers=args.workers,
            access_log=False if args.no_access_log else None,
            reload_interval=args.reload_interval,
            grace_period=args.grace_period,
            stream_lease_ttl=args.stream_lease_ttl,
        )
    except SettingsError as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(settings)


class _AnyEnv(dict[str, str]):
    """An environment in which every variable is set, for `check --ignore-env`."""

    def get(self, key: str, default: object = None) -> str:
        return "x" * 64


def check(directory: Path, env: Mapping[str, str], *, ignore_env: bool = False, public_urls: Sequence[str] = ()) -> int:
    """Load the policies as `serve` would; what only the missing public URL could settle is a note."""
    try:
        urls = PublicUrl(tuple(public_urls)) if public_urls else PublicUrl(public_urls_from_env(env))
    except ValueError as exc:  # SettingsError too
        print(f"switchyard check: {'--public-url: ' if public_urls else ''}{exc}", file=sys.stderr)
        return EXIT_USAGE
    notes: list[PolicyProblem] = []
    context = LoadContext(env=_AnyEnv() if ignore_env else env, public_url=urls.first, notes=notes)
    try:
        tenants = load_dir(directory, context)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"{directory}: {len(tenants)} tenant(s) OK: {', '.join(sorted(tenants))}")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _tenant_and_form(
    command: str, tenant_id: str, directory: Path, env: Mapping[str, str], public_url: str, pairs: Sequence[str]
) -> tuple[Tenant, dict[str, str]] | int:
    """The tenant loaded as `serve` would, and the key=value pairs as a form; else the exit code
    (the reason printed)."""
    try:
        tenants = load_dir(directory, LoadContext(env=env, public_url=public_url))
    except PolicyError as exc:
        print(f"switchyard {command}: cannot load policies:\n{exc}", file=sys.stderr)
        return 1
    tenant = tenants.get(tenant_id)
    if tenant is None:
        have = ", ".join(sorted(tenants))
        print(f"switchyard {command}: no tenant {tenant_id!r} in {directory} (have: {have})", file=sys.stderr)
        return 1
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"switchyard {command}: {pair!r} is not key=value", file=sys.stderr)
            return EXIT_USAGE
        params[name] = value
    return tenant, params


def explain(
    tenant_id: str,
    pairs: Sequence[str],
    directory: Path,
    env: Mapping[str, str],
    public_url: str | None = None,
    limiter: str | None = None,
) -> int:
    """Print what the gateway would do with one webhook (gateway/explain.py), as JSON."""
    import asyncio

    import orjson

    from gateway import explain as explaining

    base = (public_url or (public_urls_from_env(env) or ("http://127.0.0.1:8080",))[0]).rstrip("/")
    found = _tenant_and_form("explain", tenant_id, directory, env, base, pairs)
    if isinstance(found, int):
        return found
    tenant, params = found
    kind = params.pop("kind", "voice")
    if kind not in ("voice", "sms", "status"):
        print(f"switchyard explain: kind={kind!r}: use voice, sms or status", file=sys.stderr)
        return EXIT_USAGE
    params.setdefault("AccountSid", tenant.account_sid)
    if tenant.numbers:
        params.setdefault("To", min(tenant.numbers))
    spend = asyncio.run(_spend(limiter, tenant_id)) if limiter else None
    report = explaining.explain(tenant, kind, params, f"{base}/t/{tenant_id}/{kind}", spend)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _spend(url: str, tenant: str) -> Spend:
    import time

    from gateway.limits.budget import utc_day
    from gateway.limits.factory import stores_from_url

    stores = stores_from_url(url)
    try:
        return await stores.ledger.spend(tenant, utc_day(time.time()))
    finally:
        await stores.close()


def sign(
    tenant_id: str,
    url: str,
    pairs: Sequence[str],
    directory: Path,
    env: Mapping[str, str],
    public_url: str | None = None,
) -> int:
    """Sign with twilio's own RequestValidator, so a hand-made request tests our verifier too."""
    from twilio.request_validator import RequestValidator

    if public_url is None:
        parts = urlsplit(url)
        public_url = f"{parts.scheme}://{parts.netloc}"
    found = _tenant_and_form("sign", tenant_id, directory, env, public_url, pairs)
    if isinstance(found, int):
        return found
    tenant, params = found
    # Sensible defaults so `sign --tenant t --url …/voice` alone makes a realistic call.
    params.setdefault("AccountSid", tenant.account_sid)
    if tenant.numbers:
        params.setdefault("To", min(tenant.numbers))
    params.setdefault("From", "+15005550006")
    kind = urlsplit(url).path.rsplit("/", 1)[-1]
    if kind == "sms":
        params.setdefault("MessageSid", "SM" + secrets.token_hex(16))
        params.setdefault("Body", "hello")
    else:
        params.setdefault("CallSid", "CA" + secrets.token_hex(16))
        params.setdefault("Direction", "inbound")
    signature = RequestValidator(tenant.keys[0].decode()).compute_signature(url, params)
    data = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in sorted(params.items()))
    print(f"curl -sS -X POST {shlex.quote(url)} -H {shlex.quote('X-Twilio-Signature: ' + signature)} {data}")
    print(f"# form body: {urlencode(sorted(params.items()))}", file=sys.stderr)
    return 0


def token(tenant_id: str, directory: Path, env: Mapping[str, str], scopes: tuple[str, ...], ttl: int) -> int:
    """Print a JWT the tenant's API accepts (its HS256 secret, audience and issuer)."""
    import time

    from gateway.auth.jwt import SCOPES, mint

    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not 0 < ttl <= 86_400:
        print(f"switchyard token: scopes are {', '.join(SCOPES)}; --ttl 1 to 86400", file=sys.stderr)
        return EXIT_USAGE
    found = _tenant_and_form("token", tenant_id, directory, env, "http://127.0.0.1:8080", ())
    if isinstance(found, int):
        return found
    try:
        print(mint(found[0], scopes, ttl, time.time()))
    except ValueError as error:
        print(f"switchyard token: {error}", file=sys.stderr)
        return 1
    return 0


NO_PUBLIC_URL = """\
switchyard: refusing to start without a public URL.
  Twilio signs each webhook over the full URL it called (e.g. https://gw.example.com/twilio/voice),
  and the gateway checks the signature against that URL. It cannot take it from the request: any
  client can set the Host header. Give the base URL(s) Twilio calls:
    --public-url https://gw.example.com            (repeatable), or
    SWITCHYARD_PUBLIC_URL=https://gw.example.com   (comma-separated);
  or, behind a proxy that sets X-Forwarded-Proto/-Host, trust it: --trusted-proxy CIDR
  (SWITCHYARD_TRUSTED_PROXIES)."""


def serve(settings: Settings) -> int:
    if not settings.public_urls and not settings.trusted_proxies:
        print(NO_PUBLIC_URL, file=sys.stderr)
        return EXIT_USAGE
    if settings.workers > 1 and not is_shared(settings.limiter_url):
        print(
            f"switchyard: --workers {settings.workers} with {settings.limiter_url} would give each process the "
            "full limit, multiplying every tenant's quota by the number of workers. Refusing: use a shared "
            "store (--limiter redis://host:port/0) or one worker.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging()
    try:
        app = _check_startup(settings)
    except (PolicyError, ValueError) as exc:
        print(f"switchyard: cannot start:\n{exc}", file=sys.stderr)
        return 1
    if settings.workers == 1:
        return _run_worker(settings, app)  # the app just checked: the policies loaded once
    return _supervise(settings)


def _check_startup(settings: Settings) -> web.Application:
    """Fail before binding the port: bad policies, missing secrets, a bad public URL."""
    from gateway.app import create_app

    return create_app(settings)


def _run_worker(settings: Settings, app: web.Application | None = None) -> int:
    """One worker in this process (gateway/server.py): serve, drain on SIGTERM/SIGINT, exit."""
    from gateway.server import run

    return run(settings, app)


def _worker_process(settings: Settings) -> None:
    """The target of each supervised worker process."""
    # A group of its own: a terminal's Ctrl+C (SIGINT to the foreground group) then reaches only
    # the supervisor, which forwards it once; reaching a worker twice would be the second signal,
    # which exits at once.
    os.setpgid(0, 0)
    sys.exit(_run_worker(settings))


def _supervise(settings: Settings) -> int:
    """N processes share the port with SO_REUSEPORT; the kernel spreads connections among them.

    Each SIGTERM, SIGINT and SIGHUP is forwarded to every worker still running, a second stop
    signal too (workers then exit at once); the supervisor exits once all have, with the worst
    exit code. Their metrics meet in one directory (telemetry/metrics.py), so /metrics on any
    worker reports the whole server."""
    context = multiprocessing.get_context("spawn")
    # Each worker its own id: the instance registry counts ids, and spans name the instance by it.
    workers = [
        context.Process(
            target=_worker_process,
            args=(dataclasses.replace(settings, instance_id=f"{settings.instance_id}-{i}"),),
            name=f"switchyard-{i}",
        )
        for i in range(settings.workers)
    ]
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    with metrics.shared_across_processes() as directory:
        # Blocked while the workers start: each inherits the mask and unblocks it once its handlers
        # are set (server.run), so a signal sent now is held, neither lost nor fatal to a worker.
        # multiprocessing unblocks SIGTERM/SIGINT after starting its resource tracker (bpo-33613),
        # which the first spawn does: start it before blocking.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, forwarded)
        try:
            for worker in workers:
                worker.start()
            for signum in forwarded:
                signal.signal(signum, forward)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, forwarded)
        _reap(workers, directory)
    return max(_exit_status(worker.exitcode) for worker in workers)


def _reap(workers: Sequence[BaseProcess], metrics_dir: str) -> None:
    """Wait for every worker, in the order they exit: one that exits early leaves the live-mode
    gauges at once, not when the workers started before it are done."""
    running = {worker.sentinel: worker for worker in workers}
    while running:
        ready = connection.wait(list(running))
        for sentinel in [sentinel for sentinel in running if sentinel in ready]:
            worker = running.pop(sentinel)
            worker.join()
            if worker.pid is not None:
                metrics.process_exited(worker.pid, metrics_dir)


def _exit_status(code: int | None) -> int:
    """A worker's exit code as a shell shows it: 128 + N for a worker killed by signal N."""
    if code is None:
        return 1
    return 128 - code if code < 0 else code
