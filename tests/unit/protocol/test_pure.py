"""The pure layers import no I/O framework: protocol/ and the pure maths load without aiohttp."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "gateway.protocol.forms",
        "gateway.protocol.twiml",
        "gateway.protocol.llm_twiml",
        "gateway.protocol.media",
        "gateway.protocol.openai",
        "gateway.auth.twilio_signature",
        "gateway.limits.bucket",
        "gateway.telemetry.cost",
    ],
)
def test_pure_module_imports_no_aiohttp(module: str) -> None:
    """Importing the module alone (in a fresh interpreter) loads neither aiohttp nor redis."""
    code = f"import sys, {module}; print(sorted(m for m in ('aiohttp', 'redis') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_policy_and_actions_import_in_either_order() -> None:
    """No import cycle between the policy schema and the action registry: each imports first."""
    for first, second in (("gateway.policy.model", "gateway.actions"), ("gateway.actions", "gateway.policy.loader")):
        code = f"import {first}, {second}"
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
