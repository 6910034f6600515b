"""Where the limit stores meet redis-py: clients from URLs, Lua scripts, deadlines, and the one
place driver errors become BackendError."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.errors import BackendError

RedisClient: TypeAlias = Redis | RedisCluster

# Everything the driver (or the socket under it) raises when the store is unwell.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
)


def connect(url: str, *, cluster: bool = False) -> RedisClient:
    """A lazily connecting client; the caller's deadline bounds every call, so retry at most
    once (a pooled connection that died with a restarted server) and never back off."""
    retry = Retry(NoBackoff(), 1)
    if cluster:
        return RedisCluster.from_url(url, retry=retry)
    return Redis.from_url(url, retry=retry)


def lua(name: str) -> str:
    """A Lua script shipped next to this module, after the prelude all of them share."""
    here = resources.files("gateway.limits")
    prelude = here.joinpath("redis_prelude.lua").read_text(encoding="utf-8")
    return prelude + "\n" + here.joinpath(name).read_text(encoding="utf-8")


def now_arg(clock_value: float | None) -> str:
    """The `now` ARGV of every script: '' lets the script read Redis TIME (one clock for all
    instances); a number injects a clock, which tests use. repr() round-trips a double."""
    return "" if clock_value is None else repr(clock_value)


@asynccontextmanager
async def guard(operation: str, deadline: float) -> AsyncIterator[None]:
    """Run a block of Redis calls under `deadline` seconds; any failure is BackendError."""
    try:
        async with asyncio.timeout(deadline):
            yield
    except TimeoutError as error:
        # asyncio's own TimeoutError says nothing; say which deadline passed.
        cause = TimeoutError(f"no answer within {deadline * 1000:.0f} ms")
        raise BackendError("redis", operation, cause) from error
    except DRIVER_ERRORS as error:
        raise BackendError("redis", operation, error) from error
    except (AttributeError, TypeError) as error:
        # redis-py's asyncio clients can trip over a connection another task is opening or
        # closing (seen here: the cluster client's `None._writer.writelines` under 100 concurrent
        # scripts; redis-py #3546 is the same race in asyncio's transport). That is the store
        # failing, not our bug: only when the error was raised inside the driver.
        if not _raised_in_driver(error):
            raise
        raise BackendError("redis", operation, error) from error


def _raised_in_driver(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(("redis.", "asyncio."))


def is_noscript(result: object) -> bool:
    """A pipeline reply saying the server lost our script (it restarted): load it, resend."""
    return isinstance(result, NoScriptError)
