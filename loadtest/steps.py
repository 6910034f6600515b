"""Each step of the voice-webhook hot path, timed alone in this process (no server, no sockets).

    .venv/bin/python loadtest/steps.py [--number 20000] [--repeat 7]

The same bench policy and signed bodies as bench.py. Each figure is the best of --repeat runs
(the least disturbed by other processes), in µs per call. A profile under load (bench.py
--profile) says how the whole request divides; this says what each gateway step costs by
itself, to within a few tenths of a µs, on a machine too noisy for throughput to do that.

It calls gateway functions by their current names; a step whose function moved is reported as
skipped rather than failing the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario

URL = "http://127.0.0.1:8080" + scenario.VOICE_PATH


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends, without an event loop's per-step costs."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine suspended; time it under a loop instead")


def build_steps() -> list[tuple[str, Callable[[], object]]]:
    from gateway import responses
    from gateway.auth.public_url import PublicUrl
    from gateway.auth.twilio_signature import verify_form
    from gateway.exchange import Exchange
    from gateway.handlers import twilio
    from gateway.limits.base import RetryKey
    from gateway.limits.factory import stores_from_url
    from gateway.policy.loader import LoadContext, load_dir
    from gateway.policy.registry import PolicySet
    from gateway.protocol.forms import parse_form

    env = scenario.demo_env()
    token = env[scenario.TOKEN_ENV]
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / f"{scenario.TENANT}.yaml").write_text(scenario.POLICY_YAML)
        policies = PolicySet.of(load_dir(Path(directory), LoadContext(env=env, public_url="http://127.0.0.1:8080")))
    tenant = policies.tenants[scenario.TENANT]
    signed = scenario.signed_voice_requests(URL, token, 1)[0]
    body, signature = signed.body, signed.headers["X-Twilio-Signature"]
    params = parse_form(body)
    public_url = PublicUrl(("http://127.0.0.1:8080",))
    rules = tenant.rules["voice"]
    failover = stores_from_url("memory://").failover
    tokens = iter(range(10**12))
    chosen = tenant.route("voice", params)
    assert chosen is not None and chosen.reply == scenario.say_twiml(), "the bench route answers the bench TwiML"
    assert verify_form(URL, params, signature, tenant.keys), "the bench signature verifies"
    reply = chosen.reply

    def rebuild() -> str | None:
        return public_url.rebuild(
            scheme="http",
            host="127.0.0.1:8080",
            path_qs=scenario.VOICE_PATH,
            peer="127.0.0.1",
            forwarded_proto=None,
            forwarded_host=None,
        )

    def record() -> object:
        exchange = Exchange("voice", policies, time.monotonic)
        exchange.caller, exchange.called = params["From"][0], params["To"][0]  # masked only when logged
        return exchange

    return [
        ("parse_form (26-field body)", lambda: parse_form(body)),
        ("tenant lookup", lambda: twilio._find_tenant(policies, None, params)),
        ("rebuild public URL", rebuild),
        ("verify_form (1 key)", lambda: verify_form(URL, params, signature, tenant.keys)),
        # Not in the sum: bench.py sends a token, as Twilio does; this shows what dedup adds.
        (
            "(limits: FailoverLimiter.acquire, memory, no token)",
            lambda: drive(failover.acquire(tenant.id, rules, 1, None)),
        ),
        (
            "limits: FailoverLimiter.acquire, memory, idempotency token",
            lambda: drive(failover.acquire(tenant.id, rules, 1, RetryKey(f"tok-{next(tokens)}", signature))),
        ),
        ("Tenant.route", lambda: tenant.route("voice", params)),
        ("responses.twiml (web.Response)", lambda: responses.twiml(reply)),
        ("Exchange (numbers kept raw)", record),
    ]


def baseline_steps() -> list[tuple[str, Callable[[], object]]]:
    from aiohttp import web

    twiml = scenario.say_twiml()
    return [
        (
            "bare app: web.Response(body=..., content_type=...)",
            lambda: web.Response(body=twiml, content_type="text/xml"),
        )
    ]


def time_step(step: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(step, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best is kept")
    args = parser.parse_args(argv)
    asyncio.set_event_loop(asyncio.new_event_loop())  # web.Response looks for a loop on some versions
    total = 0.0
    try:
        steps = build_steps()
    except (ImportError, AttributeError, KeyError) as exc:
        print(f"steps: the gateway's API moved ({exc!r}); update loadtest/steps.py", file=sys.stderr)
        return 1
    for name, step in steps:
        try:
            us = time_step(step, args.number, args.repeat)
        except (AttributeError, TypeError) as exc:
            print(f"  {'skipped':>8}       {name}: {exc!r}")
            continue
        if not name.startswith("("):
            total += us
        print(f"  {us:8.2f} us  {name}")
    print(f"  {total:8.2f} us  sum of the gateway steps, (bracketed) ones left out: the handler's own work")
    for name, step in baseline_steps():
        print(f"  {time_step(step, args.number, args.repeat):8.2f} us  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
