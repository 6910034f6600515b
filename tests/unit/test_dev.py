"""dev.py's serve flags: the demo public URL follows --port, and a caller's own replaces it."""

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
