"""dev.py's serve flags: the demo public URL follows --port, a caller's own replaces it, and the demo
runtime starts unless --no-demo or SWITCHYARD_DEMO=0 says not to."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev.py"


def _dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", DEV)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("given", "public"),
    [
        pytest.param([], "http://127.0.0.1:8080", id="default"),
        pytest.param(["--port", "9000"], "http://127.0.0.1:9000", id="port"),
        pytest.param(["--port=9001"], "http://127.0.0.1:9001", id="port-equals"),
        pytest.param(["--public-url", "https://gw.example.com", "--port", "9"], None, id="own-public-url"),
    ],
)
def test_serve_checks_signatures_for_the_port_it_listens_on(given: list[str], public: str | None) -> None:
    """`dev.py serve --port P` verifies against http://127.0.0.1:P; a --public-url given is the only one."""
    flags = _dev()._serve_flags(given)
    assert flags[:2] == ["--policies", "policies"]
    urls = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--public-url"]
    assert urls == ([public] if public else ["https://gw.example.com"])


def test_serve_follows_the_port_and_public_url_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """SWITCHYARD_PORT moves the demo public URL; SWITCHYARD_PUBLIC_URL replaces it."""
    monkeypatch.setenv("SWITCHYARD_PORT", "9100")
    assert "http://127.0.0.1:9100" in _dev()._serve_flags([])
    monkeypatch.setenv("SWITCHYARD_PUBLIC_URL", "https://gw.example.com")
    assert "--public-url" not in _dev()._serve_flags([])


@pytest.mark.parametrize(
    ("given", "env", "port", "left"),
    [
        pytest.param(["--port", "9000"], {}, 8090, ["--port", "9000"], id="default"),
        pytest.param(["--no-demo", "--port", "9000"], {}, None, ["--port", "9000"], id="no-demo-flag"),
        pytest.param([], {"SWITCHYARD_DEMO": "0"}, None, [], id="variable-off"),
        pytest.param([], {"SWITCHYARD_DEMO": "false"}, None, [], id="variable-false"),
        pytest.param([], {"SWITCHYARD_DEMO": "1", "SWITCHYARD_DEMO_PORT": "8191"}, 8191, [], id="port-variable"),
        pytest.param(["--help"], {}, None, ["--help"], id="help-serves-nothing"),
    ],
)
def test_serve_starts_the_demo_runtime_unless_told_not_to(
    given: list[str], env: dict[str, str], port: int | None, left: list[str]
) -> None:
    """--no-demo (never passed on to the gateway) or SWITCHYARD_DEMO=0 leaves the demo runtime
    out; SWITCHYARD_DEMO_PORT moves it from 8090."""
    assert _dev()._demo_plan(given, env) == (port, left)


@pytest.mark.parametrize("value", ["http", "0", "70000", ""])
def test_a_bad_demo_port_stops_dev_py_naming_the_variable(value: str) -> None:
    """A SWITCHYARD_DEMO_PORT that is no port exits with a line naming it."""
    with pytest.raises(SystemExit, match="SWITCHYARD_DEMO_PORT must be a port number"):
        _dev()._demo_plan([], {"SWITCHYARD_DEMO_PORT": value})


@pytest.mark.parametrize(
    ("given", "directory"),
    [
        pytest.param([], "policies", id="default"),
        pytest.param(["--policies", "mine"], "mine", id="flag"),
        pytest.param(["--policies=mine", "--port", "9"], "mine", id="flag-equals"),
    ],
)
def test_the_demo_runtime_reads_the_policies_the_gateway_reads(given: list[str], directory: str) -> None:
    """The demo runtime takes its tenants' token variables from the directory the gateway serves."""
    assert _dev()._policies_dir(given) == directory
