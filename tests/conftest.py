"""Shared fixtures: the fake clock, and the plugins that start real servers on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.support.clock import FakeClock

pytest_plugins: list[str] = ["tests.support.redis_server"]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it."""
    return FakeClock()
