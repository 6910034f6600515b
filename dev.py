#!/usr/bin/env python3
"""One entry point for a fresh machine with only Python 3.11+.

    python3 dev.py serve [--no-demo] [switchyard serve flags...]   # run the gateway on policies/
    python3 dev.py check [switchyard check flags...]   # validate policies/ with the demo secrets
    python3 dev.py test  [pytest args...]              # lint, type-check and run every test
    python3 dev.py sign  [switchyard sign flags...]    # print a signed curl line for the demo
    python3 dev.py token [switchyard token flags...]   # print an API token (JWT) for a demo tenant

serve, check, sign and token read the demo secrets from policies/demo.env (variables
already set win); serve listens on and checks signatures against
http://127.0.0.1:8080 (or the --port given; a --public-url given replaces it).
serve also starts the switchyard DEMO runtime (python -m gateway.demo) on
127.0.0.1:8090, where the example policies' `upstream` and `llm` routes point: a
stand-in for a tenant's runtime, for OpenAI and for Twilio's REST API (serve points
SWITCHYARD_TWILIO_API_BASE at it), so every example route and the outbound API answer
offline. Not for production; it stops when the gateway does. Leave it out with
--no-demo or SWITCHYARD_DEMO=0; SWITCHYARD_DEMO_PORT moves it (the policies name
8090). A port already taken is reported and the gateway starts without it.
check takes another directory instead of policies/. It creates `.venv` beside this file on first use and
reinstalls only when pyproject.toml changes, so every command works from a
clean clone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import venv
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
DEMO_ENV = ROOT / "policies" / "demo.env"
DEMO_PUBLIC_URL = "http://127.0.0.1:8080"
DEMO_RUNTIME_PORT = 8090  # what the example policies' upstream and llm routes name
# dev.py's own variables: the gateway refuses any SWITCHYARD_* it does not know, so they stop here.
DEMO_VARIABLES = ("SWITCHYARD_DEMO", "SWITCHYARD_DEMO_PORT")


def _ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script must explain itself on an old Python
        sys.exit(f"switchyard needs Python 3.11+, this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / ".switchyard-installed"
    if stamp.exists():
        installed_digest, _, installed_extras = stamp.read_text().partition(" ")
        # An install with the dev extras also serves `serve`: no reinstall when switching.
        if installed_digest == digest and (extras in ("", installed_extras)):
            return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"dev.py: installing switchyard[{extras}] into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f".[{extras}]" if extras else "."], cwd=ROOT, check=True)
    stamp.write_text(f"{digest} {extras}")


def _demo_env() -> dict[str, str]:
    """Demo auth tokens for the example policies; variables already set win."""
    env = dict(os.environ)
    for line in DEMO_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env.setdefault(key.strip(), value.strip())
    return env


def _run(argv: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def _exec(argv: list[str], env: dict[str, str]) -> int:
    """Become the program, so signals (SIGTERM, SIGHUP) reach the gateway, not this wrapper."""
    os.chdir(ROOT)
    os.execve(argv[0], argv, env)  # noqa: S606 - our own venv binary, argv as a list
    return 1  # not reached


def _serve_flags(rest: list[str]) -> list[str]:
    """The demo's flags, then the caller's. The public URL follows `--port` (signatures are
    checked against it), and one the caller gives replaces the demo's."""
    flags = ["--policies", "policies"]
    given = any(arg == "--public-url" or arg.startswith("--public-url=") for arg in rest)
    if not given and "SWITCHYARD_PUBLIC_URL" not in os.environ:
        port = os.environ.get("SWITCHYARD_PORT", "8080")
        for i, arg in enumerate(rest):
            if arg == "--port" and i + 1 < len(rest):
                port = rest[i + 1]
            elif arg.startswith("--port="):
                port = arg.split("=", 1)[1]
        flags += ["--public-url", DEMO_PUBLIC_URL.rsplit(":", 1)[0] + ":" + port]
    return [*flags, *rest]


def _demo_plan(rest: list[str], environ: Mapping[str, str]) -> tuple[int | None, list[str]]:
    """The demo runtime's port (None: not started) and the flags left for `switchyard serve`.

    Off with --no-demo (taken out of the flags), SWITCHYARD_DEMO=0/false/no/off, or a --help
    (nothing is served then)."""
    flags = [arg for arg in rest if arg != "--no-demo"]
    off = environ.get("SWITCHYARD_DEMO", "1").strip().lower() in ("0", "false", "no", "off")
    if len(flags) != len(rest) or off or any(arg in ("-h", "--help") for arg in flags):
        return None, flags
    value = environ.get("SWITCHYARD_DEMO_PORT", str(DEMO_RUNTIME_PORT))
    if not value.strip().isdigit() or not 0 < int(value) < 65536:
        sys.exit(f"dev.py: SWITCHYARD_DEMO_PORT must be a port number (1-65535), not {value!r}")
    return int(value), flags


def _port_taken(port: int) -> bool:
    """Something already listens on 127.0.0.1:port. SO_REUSEADDR as aiohttp binds, so a port with
    only old connections in TIME_WAIT counts as free."""
    with socket.socket() as sock:
        if os.name != "nt":  # there SO_REUSEADDR would let us bind over a live listener
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _policies_dir(rest: list[str]) -> str:
    """The directory the gateway will read: policies/, or the --policies given (it follows
    _serve_flags' own, so it wins). The demo runtime reads its tenants' token variables from the
    same files."""
    directory = "policies"
    for i, arg in enumerate(rest):
        if arg == "--policies" and i + 1 < len(rest):
            directory = rest[i + 1]
        elif arg.startswith("--policies="):
            directory = arg.split("=", 1)[1]
    return directory


def _start_demo_runtime(port: int, policies: str, env: dict[str, str]) -> None:
    """Start the demo runtime beside the gateway-to-be. Told our pid, it stops when that process
    (this one, soon the gateway: execve keeps the pid) is gone; it is never waited for here."""
    if _port_taken(port):
        print(
            f"dev.py: 127.0.0.1:{port} is already in use: not starting the demo runtime (the example"
            " upstream and llm routes reach what listens there, or answer their fallbacks)",
            file=sys.stderr,
        )
        return
    argv = [str(BIN / "python"), "-m", "gateway.demo", "--port", str(port), "--policies", policies]
    subprocess.Popen([*argv, "--parent", str(os.getpid())], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def main(args: list[str]) -> int:
    command, rest = (args[0], args[1:]) if args else ("help", [])
    if command == "serve":
        _ensure_venv("")
        env = _demo_env()
        port, rest = _demo_plan(rest, env)
        if port is not None:
            _start_demo_runtime(port, _policies_dir(rest), env)
            # The outbound API's calls and texts go to the demo's Twilio REST stand-in, even when
            # the port was taken (an older demo runtime, say): never the demo's tokens to Twilio.
            env.setdefault("SWITCHYARD_TWILIO_API_BASE", f"http://127.0.0.1:{port}")
        for name in DEMO_VARIABLES:
            env.pop(name, None)
        return _exec([str(BIN / "switchyard"), "serve", *_serve_flags(rest)], env)
    if command == "check":
        _ensure_venv("")
        # A directory given (`dev.py check my-policies`) replaces the default one.
        directory = [] if any(not arg.startswith("-") for arg in rest) else ["policies"]
        return _exec([str(BIN / "switchyard"), "check", *directory, *rest], _demo_env())
    if command in ("sign", "token"):
        _ensure_venv("")
        return _exec([str(BIN / "switchyard"), command, *rest], _demo_env())
    if command == "test":
        _ensure_venv("dev")
        py = str(BIN / "python")
        for step in (
            [py, "-m", "ruff", "check", "gateway", "tests", "loadtest", "dev.py"],
            [py, "-m", "ruff", "format", "--check", "gateway", "tests", "loadtest", "dev.py"],
            [py, "-m", "mypy"],
        ):
            if code := _run(step):
                return code
        return _run([py, "-m", "pytest", *rest])
    if command in ("help", "-h", "--help"):
        with contextlib.suppress(BrokenPipeError):  # `dev.py help | head -1`
            print(__doc__, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    print(f"dev.py: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
