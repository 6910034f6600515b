"""The policy fixture files of tests/fixtures/policies and the environment their secrets need."""

from __future__ import annotations

from pathlib import Path

from gateway.policy.loader import LoadContext

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
VALID = FIXTURES / "valid"
ENV = {
    "FIXTURE_TWILIO_AUTH_TOKEN": "fixture-token",
    "FIXTURE_SHORT_JWT_SECRET": "s" * 31,
    "FIXTURE_ALPHA_AUTH_TOKEN": "alpha-token",
    "FIXTURE_ALPHA_AUTH_TOKEN_OLD": "alpha-token-old",
    "FIXTURE_ALPHA_JWT_SECRET": "j" * 32,
    "FIXTURE_BETA_AUTH_TOKEN": "beta-token",
}
NO_PUBLIC_URL = LoadContext(env=ENV)
PUBLIC = LoadContext(env=ENV, public_url="https://gw.example.com")
