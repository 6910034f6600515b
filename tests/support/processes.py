"""Real `switchyard serve` processes on 127.0.0.1, for tests that need several of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.redis_server import free_port

START_TIMEOUT = 20.0


class GatewayProcess:
    """`python -m gateway serve …` on its own port; its output goes to a log file for failures.

    ``public_urls`` are its --public-url flags; by default the one URL tests call it by, ``base``.
    """

    def __init__(
        self,
        policies: Path,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        port: int | None = None,
        public_urls: Sequence[str] | None = None,
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
            "--no-access-log",
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

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
