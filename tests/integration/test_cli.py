"""The CLI as a user runs it: `check`, `sign`'s curl line and `token`'s JWT against a real gateway
process, and dev.py."""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import GatewayProcess
from tests.support.twilio import ENV

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policies"


def switchyard(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def demo_env(**extra: str) -> dict[str, str]:
    """The variables of policies/demo.env, as a newcomer would export them, and nothing else of ours."""
    env = {"PATH": "/usr/bin:/bin"}
    for line in (POLICIES / "demo.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return {**env, **extra}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("cli") / "policies"
    directory.mkdir()
    for policy in POLICIES.glob("*.yaml"):
        (directory / policy.name).write_text(policy.read_text())
    process = GatewayProcess(directory, ENV).wait_ready()
    yield process
    process.stop()


def run_curl(line: str) -> tuple[int, str]:
    """Do what the printed curl line does (curl itself may not be installed): POST the signed form."""
    words = shlex.split(line)
    assert words[:4] == ["curl", "-sS", "-X", "POST"]
    url, header = words[4], words[6]
    fields = [words[i + 1] for i, word in enumerate(words) if word == "--data-urlencode"]
    name, _, value = header.partition(": ")
    body = urllib.parse.urlencode([field.partition("=")[::2] for field in fields]).encode()
    request = urllib.request.Request(url, data=body, headers={name: value}, method="POST")  # noqa: S310 - http://127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_sign_prints_a_curl_line_the_gateway_accepts(gateway: GatewayProcess) -> None:
    """`switchyard sign` for bistro's SMS URL makes a request that gets the menu reply."""
    result = switchyard("sign", "--tenant", "bistro", "--url", gateway.base + "/twilio/sms", "Body=menu", env=ENV)
    assert result.returncode == 0, result.stderr
    status, text = run_curl(result.stdout.strip())
    assert status == 200
    assert "risotto" in text


def test_forged_curl_line_gets_403(gateway: GatewayProcess) -> None:
    """The same line with its signature altered is refused."""
    result = switchyard("sign", "--tenant", "acme-health", "--url", gateway.base + "/twilio/voice", env=ENV)
    line = result.stdout.strip().replace("X-Twilio-Signature: ", "X-Twilio-Signature: x")
    status, _ = run_curl(line)
    assert status == 403


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 - http://127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http://127.0.0.1
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_token_prints_a_jwt_the_gateway_accepts(gateway: GatewayProcess) -> None:
    """`switchyard token` for northwind (its HS256 secret, audience) reads its limits; the same
    token with its signature altered is 401."""
    result = switchyard("token", "--tenant", "northwind", "--scope", "cost:read", env=ENV)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert _get(gateway.base + "/api/v1/limits", token) == 200
    assert _get(gateway.base + "/api/v1/limits", token[:-4] + "AAAA") == 401


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("--tenant", "bistro"), 1, "tenant bistro has no api: block"),
        (("--tenant", "northwind", "--scope", "calls:read"), 2, "scopes are calls:write"),
        (("--tenant", "nobody"), 1, "no tenant 'nobody'"),
    ],
)
def test_token_says_why_it_cannot(args: tuple[str, ...], code: int, says: str) -> None:
    """A tenant without an API, an unknown scope or tenant: a reason and a non-zero status."""
    result = switchyard("token", *args, env=ENV)
    assert result.returncode == code and says in result.stderr and result.stdout == ""


def test_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    """`check` on a directory with two bad files names both, with file and key, and exits 1."""
    for name in ("rate-zero.yaml", "unknown-top-key.yaml"):
        (tmp_path / name).write_text((FIXTURES / name).read_text())
    result = switchyard("check", str(tmp_path), "--ignore-env")
    assert result.returncode == 1
    assert "rate-zero.yaml: limits.voice.rate: must be > 0" in result.stderr
    assert "unknown-top-key.yaml: colour: unknown key" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_check_names_missing_secrets(tmp_path: Path) -> None:
    """Without the environment, `check` names each unset variable; with --ignore-env it passes."""
    bare = {"PATH": "/usr/bin:/bin"}
    missing = switchyard("check", str(POLICIES), "--public-url", "https://gw.example.com", env=bare)
    assert missing.returncode == 1
    assert (
        "bistro.yaml: twilio.auth_token_env: environment variable BISTRO_TWILIO_AUTH_TOKEN is not set" in missing.stderr
    )
    ok = switchyard("check", str(POLICIES), "--public-url", "https://gw.example.com", "--ignore-env", env=bare)
    assert ok.returncode == 0, ok.stderr
    assert "3 tenant(s) OK" in ok.stdout


def test_serve_refuses_to_start_on_a_bad_policy(tmp_path: Path) -> None:
    """`serve` with a bad policy exits 1 before binding, naming file and key."""
    (tmp_path / "rate-zero.yaml").write_text((FIXTURES / "rate-zero.yaml").read_text())
    flags = ["--policies", str(tmp_path), "--port", "1", "--public-url", "http://127.0.0.1:1"]
    result = switchyard("serve", *flags, env={**ENV, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "rate-zero.yaml: limits.voice.rate: must be > 0" in result.stderr


def test_check_passes_on_shipped_policies_with_demo_env() -> None:
    """`switchyard check` with no arguments, in the repository, with demo.env's variables: OK, plus a note
    that acme-health's stream route will use the public URL given to serve."""
    result = switchyard("check", env=demo_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("policies: 3 tenant(s) OK")
    notes = result.stderr.splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: acme-health.yaml: routes.1.stream: "), result.stderr


def test_check_reads_public_url_variable() -> None:
    """SWITCHYARD_PUBLIC_URL stands in for --public-url: the stream route has its URL (no note), and a bad
    value is refused naming the variable; a --public-url flag wins over it."""
    ok = switchyard("check", str(POLICIES), env=demo_env(SWITCHYARD_PUBLIC_URL="https://gw.example.com"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    bad_env = demo_env(SWITCHYARD_PUBLIC_URL="gw.example.com")
    bad = switchyard("check", str(POLICIES), env=bad_env)
    assert bad.returncode == 2
    assert "SWITCHYARD_PUBLIC_URL: public base URL 'gw.example.com' must be an absolute" in bad.stderr
    flag = switchyard("check", str(POLICIES), "--public-url", "https://gw.example.com", env=bad_env)
    assert flag.returncode == 0, flag.stderr


def test_dev_py_unknown_command() -> None:
    """`python3 dev.py x` names the unknown command, prints the usage and exits 2."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "frobnicate"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.startswith("dev.py: unknown command 'frobnicate'\n")
    assert "python3 dev.py check" in result.stderr
