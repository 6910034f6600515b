"""Every module of the gateway imports on its own, first, in a fresh interpreter: an import
circle that only works in one order (the one the app happens to use) fails here (the way
aiohttp's tests/test_circular_imports.py checks its own)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    found = [
        info.name
        for info in pkgutil.walk_packages(gateway.__path__, prefix="gateway.")
        if not info.name.endswith(".__main__")  # runs the program when imported
    ]
    return ["gateway", *sorted(found)]


def _import_alone(module: str) -> tuple[str, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    return module, done.returncode, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each gateway module, imported before any other in its own interpreter, imports cleanly."""
    modules = _modules()
    assert len(modules) > 50  # the walk found the package, not an empty path
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(m, err) for m, code, err in pool.map(_import_alone, modules) if code != 0]
    assert failed == []
