"""Real `switchyard serve` processes on 127.0.0.1, for tests that need several of them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.support.redis_server import free_port

START_TIMEOUT = 20.0


class GatewayProcess:
    """`python -m gateway serve …` on its own port; its output goes to a log file for failures.

    ``public_urls`` are its --public-url flags; by default the one URL tests call it by, ``base``.
    ``access_log`` keeps its JSON access lines (off by default: --no-access-log).
    """

    def __init__(
        self,
        policies: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        port: int | None = None,
        public_urls: Sequence[str] | None = None,
        access_log: bool = False,
    ):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        urls = [self.base] if public_urls is None else public_urls
        self.log = policies.parent / f"gateway-{self.port}.log"
        command = [
            sys.executable, "-m", "gateway", "serve",
            "--policies", str(policies),
            "--port", str(self.port),
            *(flag for url in urls for flag in ("--public-url", url)),
            *(() if access_log else ("--no-access-log",)),
            "--reload-interval", "0",
            *args,
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def wait_ready(self) -> GatewayProcess:
        """Poll /healthz until it answers; the deadline bounds a broken start, not a normal one."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1) as response:  # noqa: S310 - http://127.0.0.1
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not answer /healthz in {START_TIMEOUT}s:\n{self.output()}")

    def output(self, limit: int | None = 4000) -> str:
        """What it printed (stdout and stderr), its last `limit` characters; None for all."""
        text = self.log.read_text(errors="replace")
        return text if limit is None else text[-limit:]

    def wait_output(self, needle: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Until `needle` is printed `count` times (a worker's "serving on" line, say)."""
        deadline = time.monotonic() + timeout
        while self.output(None).count(needle) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                exited = self.proc.returncode
                raise RuntimeError(f"not {count} x {needle!r} in {timeout}s (exit {exited}):\n{self.output()}")
            time.sleep(0.02)

    def wait_refusing(self, timeout: float = 10.0) -> None:
        """Until a new connection to its port is refused: its listening socket is closed (a drain).

        Each probe that connects asks for /healthz and reads to the end before the next: probing
        no faster than the gateway answers, it never fills the listen backlog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    while probe.recv(4096):
                        pass
            except ConnectionRefusedError:
                return
            except (ConnectionResetError, BrokenPipeError):  # queued when the listener closed: the next is refused
                continue
        raise RuntimeError(f"port {self.port} still accepts connections after {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float) -> int:
        """Its exit code, waiting at most `timeout` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"gateway still running after {timeout}s:\n{self.output()}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def stopping() -> Iterator[list[GatewayProcess]]:
    """A list for the processes a test starts; each one still running is stopped after the block."""
    processes: list[GatewayProcess] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()
