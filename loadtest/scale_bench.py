"""The gateway at 10 to 30,000 tenants: start-up, reloads, stalls, latency, memory (issue 18).

    .venv/bin/python loadtest/scale_bench.py [--sizes 10,1000,10000,30000] [--limiter memory|redis]
                                             [--rate 300] [--seconds 10] [--json FILE]

For each size, a directory of generated tenants (loadtest/tenants.py: own account SIDs, 1-3
numbers, buckets, a third with concurrent_streams, half with prices and a budget, 3-6 routes),
then, as an operator would see it:

  check       `switchyard check` on the directory: seconds and peak RSS;
  ready       `switchyard serve` started until /healthz answers 200; RSS then;
  idle        a /healthz probe every 10 ms for --idle seconds (in a process of its own): its
              longest answer (a stall of the loop shows as a late answer), the gateway's
              CPU, Redis commands per second;
  load        signed voice webhooks (twilio's RequestValidator) at --rate per second, open loop,
              round robin over K = min(tenants, rate x seconds) tenants: p50 / p99 / max and what
              they were answered (Say, Reject); the probe runs meanwhile;
  metrics     one /metrics scrape after that traffic: its size and time, the probe's longest;
  reload      one file edited (its greeting): seconds until a signed webhook to that tenant
              hears the new text, and the probe's longest answer meanwhile;
  sighup      every file re-read (SIGHUP): seconds until the log says so, the probe's longest;
  redis       used_memory after the traffic (with --limiter redis).

Everything runs on 127.0.0.1. The gateway starts on every CPU (its load forks a worker per
CPU, as it would in production), then is pinned to the first; this process (load and probe)
and Redis run on the other. One run prints a table and can write the figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import tenants

PUBLIC = "http://gw.scale.test"
CALLER = "+14155550100"
PROBE_EVERY = 0.010
EDITED = 7  # the tenant whose file the reload edits


@dataclass
class Probe:
    """What a probe process saw: each /healthz answer's time, and failures."""

    times: list[float] = field(default_factory=list)
    failures: int = 0

    def longest_ms(self) -> float:
        return max(self.times, default=0.0) * 1000


def probe_process(port: int, ready: Any, stop: Any, out: Any) -> None:
    """A GET /healthz every PROBE_EVERY seconds on one keep-alive connection, in a process of
    its own: a hiccup of the load generator's process must not show as a stall of the gateway."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: list[float] = []
    failures = 0
    ready.set()
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            failures += response.status != 200
        except (OSError, http.client.HTTPException):
            failures += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        times.append(time.monotonic() - started)
        next_at += PROBE_EVERY
        time.sleep(max(0.0, next_at - time.monotonic()))
    out.put((times, failures))


@contextlib.asynccontextmanager
async def probing(port: int) -> Any:
    context = multiprocessing.get_context("spawn")
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=probe_process, args=(port, ready, stop, out), daemon=True)
    process.start()
    await asyncio.to_thread(ready.wait, 30)
    probe = Probe()
    try:
        yield probe
    finally:
        stop.set()
        probe.times, probe.failures = await asyncio.to_thread(out.get, True, 30)
        await asyncio.to_thread(process.join, 10)


def voice_params(i: int, rng: random.Random) -> dict[str, str]:
    return {
        "AccountSid": f"AC{i:032x}",
        "CallSid": "CA" + "".join(rng.choices("0123456789abcdef", k=32)),
        "From": CALLER,
        "To": tenants.number(i, 0),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }


def signed(i: int, rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """Tenant i's voice webhook and its headers, signed by twilio's own library."""
    params = voice_params(i, rng)
    signature = RequestValidator(tenants.TOKEN).compute_signature(PUBLIC + "/twilio/voice", params)
    return params, {"X-Twilio-Signature": signature}


def percentile(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def load(port: int, size: int, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop webhooks at `rate`/s over K tenants; latency in ms, answers by TwiML verb."""
    count = int(rate * seconds)
    k = min(size, count)
    rng = random.Random(18)
    requests = [signed(n % k, rng) for n in range(count)]
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    url = f"http://127.0.0.1:{port}/twilio/voice"
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(params: dict[str, str], headers: dict[str, str]) -> None:
            started = time.monotonic()
            try:
                async with session.post(url, data=params, headers=headers) as response:
                    text = await response.text()
            except aiohttp.ClientError:
                answers["error"] += 1
                return
            latencies.append(time.monotonic() - started)
            verb = "Say" if "<Say" in text else "Reject" if "<Reject" in text else str(response.status)
            answers[verb] += 1

        tasks = []
        begin = time.monotonic()
        for n, (params, headers) in enumerate(requests):
            await asyncio.sleep(max(0.0, begin + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(params, headers)))
        await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    return {
        "tenants": k,
        "requests": count,
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] if ordered else 0.0) * 1000,
        "answers": dict(answers),
    }


async def hears(port: int, i: int, text: str, within: float) -> float:
    """Seconds until tenant i's webhook answers with `text` (one signed webhook every 20 ms)."""
    rng = random.Random(i)
    url = f"http://127.0.0.1:{port}/twilio/voice"
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < within:
            params, headers = signed(i, rng)
            async with session.post(url, data=params, headers=headers) as response:
                if text in await response.text():
                    return time.monotonic() - started
            await asyncio.sleep(0.02)
    raise RuntimeError(f"tenant {i} did not say {text!r} within {within:.0f} s")


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of the process on `cpus` (threads started later inherit it)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def redis_info(port: int) -> dict[str, Any]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return {**client.info("stats"), **client.info("memory")}
    finally:
        client.close()


def run_check(directory: Path, env: dict[str, str], cpus: set[int]) -> dict[str, float]:
    """`switchyard check` on the directory (on `cpus`): wall seconds and its peak RSS."""
    argv = [str(bench.BIN / "switchyard"), "check", str(directory), "--public-url", PUBLIC]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=bench.pinned(cpus)
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"check failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return {"check_s": seconds, "check_rss_mib": usage.ru_maxrss / 1024}


async def wait_log(log: Path, text: str, after: int, within: float) -> float:
    """Seconds until `text` appears in the log past byte `after`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if text in (await asyncio.to_thread(log.read_text, errors="replace"))[after:]:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise RuntimeError(f"{text!r} not logged within {within:.0f} s")


async def measure(size: int, limiter: str, rate: float, seconds: float, idle: float) -> dict[str, Any]:
    result: dict[str, Any] = {"tenants": size, "limiter": limiter}
    gateway_cpus, other_cpus = bench.cpu_plan(True)  # from this process's CPUs: all of them, at first
    every = os.sched_getaffinity(0)
    if other_cpus is not None:
        os.sched_setaffinity(0, other_cpus)  # this process (load, probe) too: the gateway's CPU is its own
    try:
        return await _measure(result, size, limiter, rate, seconds, idle, every, gateway_cpus, other_cpus)
    finally:
        os.sched_setaffinity(0, every)


async def _measure(
    result: dict[str, Any],
    size: int,
    limiter: str,
    rate: float,
    seconds: float,
    idle: float,
    every: set[int],
    gateway_cpus: set[int] | None,
    other_cpus: set[int] | None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"scale-{size}-") as tmp:
        workdir = Path(tmp)
        directory = workdir / "policies"
        made = tenants.generate(directory, size)
        env = {**os.environ, tenants.TOKEN_ENV: tenants.TOKEN}
        result.update(run_check(directory, env, every))
        redis_server = bench.start_redis(workdir, other_cpus) if limiter == "redis" else None
        url = f"redis://127.0.0.1:{redis_server.port}/0" if redis_server else "memory://"
        port = bench.free_port()
        argv = [str(bench.BIN / "switchyard"), "serve", "--policies", str(directory), "--port", str(port)]
        argv += ["--public-url", PUBLIC, "--limiter", url, "--no-access-log", "--reload-interval", "2"]
        started = time.monotonic()
        # Every CPU while it starts (its policy load forks a worker per CPU, as in production),
        # then pinned to the first one, apart from this process's load and probe.
        gateway = bench.spawn("gateway", argv, workdir, every, env)
        gateway.port = port
        try:
            bench.wait_ready(gateway, timeout=300)
            result["ready_s"] = time.monotonic() - started
            pin(gateway.proc.pid, gateway_cpus)
            result["rss_mib"] = rss_mib(gateway.proc.pid)
            await asyncio.sleep(1.0)  # the watcher and the first gauge cycle started

            info = redis_info(redis_server.port) if redis_server else None
            cpu = bench.cpu_seconds(gateway.proc.pid)
            async with probing(port) as probe:
                await asyncio.sleep(idle)
            result["idle_cpu_pct"] = (bench.cpu_seconds(gateway.proc.pid) - cpu) / idle * 100
            result["idle_stall_ms"] = probe.longest_ms()
            if redis_server and info:
                after = redis_info(redis_server.port)
                # Less this bench's own two INFO calls.
                commands = int(after["total_commands_processed"]) - int(info["total_commands_processed"]) - 2
                result["idle_redis_commands_per_s"] = commands / idle

            cpu = bench.cpu_seconds(gateway.proc.pid)
            async with probing(port) as probe:
                result["load"] = await load(port, size, rate, seconds)
            result["load"]["cpu_us_per_request"] = (
                (bench.cpu_seconds(gateway.proc.pid) - cpu) / result["load"]["requests"] * 1e6
            )
            result["load"]["probe_longest_ms"] = probe.longest_ms()

            async with probing(port) as probe, aiohttp.ClientSession() as session:
                scrape = time.monotonic()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    body = await response.read()
                scraped = time.monotonic() - scrape
                await asyncio.sleep(0.1)
            result["metrics"] = {
                "bytes": len(body),
                "scrape_ms": scraped * 1000,
                "probe_longest_ms": probe.longest_ms(),
            }
            if redis_server:
                result["redis_used_mib"] = int(redis_info(redis_server.port)["used_memory"]) / 2**20

            edited = made[EDITED]
            new_greeting = f"Now closed for tenant {EDITED}, {time.time():.0f}."
            text = edited.file.read_text(encoding="utf-8").replace(edited.greeting, new_greeting)
            async with probing(port) as probe:
                await asyncio.sleep(0.2)
                edited.file.write_text(text, encoding="utf-8")
                visible = await hears(port, EDITED, new_greeting, within=120)
                await asyncio.sleep(0.3)
            result["reload"] = {"visible_s": visible, "probe_longest_ms": probe.longest_ms()}

            mark = len(gateway.log.read_text(errors="replace"))
            async with probing(port) as probe:
                await asyncio.sleep(0.2)
                gateway.proc.send_signal(signal.SIGHUP)
                took = await wait_log(gateway.log, "policies reloaded (SIGHUP)", mark, within=300)
                await asyncio.sleep(0.3)
            result["sighup"] = {"seconds": took, "probe_longest_ms": probe.longest_ms()}
            result["rss_after_mib"] = rss_mib(gateway.proc.pid)
        finally:
            gateway.stop()
            if redis_server:
                redis_server.stop()
    return result


def row(r: dict[str, Any]) -> str:
    load_ = r["load"]
    redis_part = ""
    if "idle_redis_commands_per_s" in r:
        redis_part = f" | {r['idle_redis_commands_per_s']:.1f} | {r['redis_used_mib']:.1f}"
    return (
        f"| {r['tenants']:,} | {r['check_s']:.2f} | {r['ready_s']:.2f} | {r['rss_mib']:.0f} "
        f"| {r['reload']['visible_s']:.2f} | {r['reload']['probe_longest_ms']:.1f} "
        f"| {r['sighup']['seconds']:.2f} | {r['sighup']['probe_longest_ms']:.1f} "
        f"| {r['idle_stall_ms']:.1f}; {r['idle_cpu_pct']:.2f} % "
        f"| {load_['p50_ms']:.2f} / {load_['p99_ms']:.2f} | {load_['cpu_us_per_request']:.0f} "
        f"| {r['metrics']['bytes'] / 1e6:.2f} MB, {r['metrics']['scrape_ms']:.0f} ms, "
        f"probe {r['metrics']['probe_longest_ms']:.1f} ms{redis_part} |"
    )


HEADER = (
    "| tenants | check s | ready s | RSS MiB | reload visible s | its stall ms | SIGHUP s | its stall ms "
    "| idle stall ms; CPU | webhook p50 / p99 ms | CPU µs/req | /metrics after load |"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000,10000,30000", help="tenant counts, comma-separated")
    parser.add_argument("--limiter", choices=("memory", "redis"), default="memory")
    parser.add_argument("--rate", type=float, default=300.0, help="webhooks per second in the load phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("--idle", type=float, default=5.0, help="length of the idle probe")
    parser.add_argument("--json", type=Path, help="write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = asyncio.run(measure(size, args.limiter, args.rate, args.seconds, args.idle))
        print(json.dumps(result), flush=True)
        results.append(result)
    print(HEADER + (" idle Redis cmd/s | Redis MiB |" if args.limiter == "redis" else ""))
    for result in results:
        print(row(result))
    if results:
        base = results[0]["load"]["p99_ms"]
        for result in results[1:]:
            print(f"p99 at {result['tenants']:,} / at {results[0]['tenants']:,}: {result['load']['p99_ms'] / base:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
