"""Shared fixtures: the fake clock, and the plugins that start real servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.telemetry import accesslog
from tests.support.clock import FakeClock

pytest_plugins: list[str] = ["tests.support.redis_server"]


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it."""
    return FakeClock()


@pytest.fixture(autouse=True)
def _access_lines_written() -> Iterator[None]:
    """Access lines a test left buffered are written while its own output is captured, not at
    exit after pytest's summary."""
    yield
    accesslog.flush()
