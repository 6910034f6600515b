"""Where the limit stores meet redis-py: clients from URLs, Lua scripts, deadlines, and the one
place driver errors become BackendError."""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, TypeAlias

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from gateway.errors import BackendError

RedisClient: TypeAlias = Redis | RedisCluster

log = logging.getLogger(__name__)

# Connections one client keeps open at most (per node, for a cluster), and so the calls in flight
# on it at once: every store of an app shares the client, and a burst beyond this waits its turn
# at the gate (Gate) instead of failing. redis-py's own pool raises MaxConnectionsError past its
# size; a burst of 200 budgeted webhooks did, which tripped the breaker and sent the tenant to a
# local ledger that did not know the day's spend (issue 17).
POOL_SIZE = 64

# How long a call may wait for its turn at the gate before it is given up (BackendError with an
# Overloaded cause). Apart from the store's own deadline, which starts once the call has its
# connection: a queue is our back-pressure, not the store failing, and never opens the breaker.
QUEUE_TIMEOUT = 2.0

# Everything the driver (or the socket under it) raises when the store is unwell.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
)


class CircuitOpen(Exception):
    """The cause of a BackendError raised without calling Redis: the breaker is open."""


class Overloaded(Exception):
    """No connection came free within QUEUE_TIMEOUT: back-pressure, not a failing store."""


class Gate:
    """At most `size` calls on one client at once; the others wait in turn (FIFO), each up to
    `wait` seconds. A pipeline is one call: the coalesced limiter holds one slot per batch."""

    def __init__(self, size: int = POOL_SIZE, wait: float = QUEUE_TIMEOUT) -> None:
        if size < 1 or not wait > 0:
            raise ValueError(f"a gate needs size >= 1 and wait > 0, got {size}, {wait}")
        self.size = size
        self._wait = wait
        self._slots = asyncio.Semaphore(size)
        self.waited = 0
        """Calls that found every connection busy and queued (a count for tests and metrics)."""
        self.gave_up = 0
        """Calls that queued longer than `wait` and were given up."""

    @property
    def busy(self) -> int:
        """Calls holding a connection now."""
        return self.size - self._slots._value  # asyncio.Semaphore has no public count

    async def enter(self, operation: str) -> None:
        """Take a slot, at once when one is free (no suspension), else in turn within `wait`."""
        if not self._slots.locked():
            await self._slots.acquire()  # returns without yielding: a free slot is taken at once
            return
        self.waited += 1
        try:
            async with asyncio.timeout(self._wait):
                await self._slots.acquire()
        except TimeoutError as error:
            self.gave_up += 1
            if self.gave_up == 1 or self.gave_up % 1000 == 0:
                log.warning(
                    "redis: %s waited %.1f s for one of %d connections (%d calls given up so far)",
                    operation, self._wait, self.size, self.gave_up,
                )  # fmt: skip
            cause = Overloaded(f"no connection free within {self._wait * 1000:.0f} ms ({self.size} busy)")
            raise BackendError("redis", operation, cause, overloaded=True) from error

    def leave(self) -> None:
        self._slots.release()


# The gate of each client connect() made (weakly: a client closed and dropped takes its gate).
_GATES: weakref.WeakKeyDictionary[RedisClient, Gate] = weakref.WeakKeyDictionary()


def gate_of(client: RedisClient) -> Gate | None:
    """The gate connect() put in front of `client` (None for a client made elsewhere)."""
    return _GATES.get(client)


def connect(
    url: str, *, cluster: bool = False, pool_size: int = POOL_SIZE, queue_timeout: float = QUEUE_TIMEOUT
) -> RedisClient:
    """A lazily connecting client behind a Gate of `pool_size` calls; the caller's deadline bounds
    every call, so retry at most once (a pooled connection that died with a restarted server) and
    never back off. The driver's pool is as large as the gate, so it never refuses a connection."""
    retry = Retry(NoBackoff(), 1)
    client: RedisClient
    if cluster:
        client = RedisCluster.from_url(url, retry=retry, max_connections=pool_size)
    else:
        client = Redis.from_url(url, retry=retry, max_connections=pool_size)
    _GATES[client] = Gate(pool_size, queue_timeout)
    return client


def lua(*names: str) -> str:
    """A Lua script shipped next to this module, after the prelude all of them share (several
    files join in order: a library of functions, then the script that calls them)."""
    here = resources.files("gateway.limits")
    parts = ["redis_prelude.lua", *names]
    return "\n".join(here.joinpath(part).read_text(encoding="utf-8") for part in parts)


def now_arg(clock_value: float | None) -> str:
    """The `now` ARGV of every script: '' lets the script read Redis TIME (one clock for all
    instances); a number injects a clock, which tests use. repr() round-trips a double."""
    return "" if clock_value is None else repr(clock_value)


@asynccontextmanager
async def guard(operation: str, deadline: float, gate: Gate | None = None) -> AsyncIterator[None]:
    """Run a block of Redis calls on one connection under `deadline` seconds (counted from when
    the gate lets it in); any failure is BackendError (overloaded=True when the gate's queue
    was too long: not the store's fault)."""
    if gate is not None:
        await gate.enter(operation)
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
    finally:
        if gate is not None:
            gate.leave()


def _raised_in_driver(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(("redis.", "asyncio."))


Command = tuple[str | int | bytes, ...]


class Pipe:
    """A connection of its own for one coalescer's batches, packed by hiredis.

    One batch is in flight at a time (coalesce.py), so one connection carries them all, outside
    the pool and its gate. Why not redis-py's pipeline: its packer encodes every argument in
    Python (HiredisRespSerializer.pack), measured at ~20 µs for a webhook's 18-argument EVALSHA,
    where hiredis.pack_command packs the same command in ~3 µs; and its pool's get_connection
    and each reply's own socket timeout cost more per batch. The caller's guard() bounds the
    whole batch; a batch cut short (deadline, error) drops the connection, whose state is then
    unknown. A plain Redis client only (a cluster routes each command to its node).
    """

    def __init__(self, client: Redis) -> None:
        self._pool = client.connection_pool
        self._connection: AbstractConnection | None = None
        self._answered = False  # did the batch in flight get a reply (then it is not sent again)

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """One reply per command, in order; an error reply (ResponseError, e.g. NOSCRIPT) is
        returned in its place, not raised. Raises the driver's errors for the batch."""
        # hiredis's stub types the tuple as of one element; it packs any length.
        packed = b"".join([hiredis.pack_command(command) for command in commands])  # type: ignore[arg-type]
        reused = self._connection is not None
        try:
            return await self._run(packed, len(commands))
        except (RedisConnectionError, OSError):
            if not reused or self._answered:
                # Once a reply came, the server ran the batch (or its start): sent again, its
                # charges would be charged twice.
                raise
            # A kept connection the server dropped (it restarted, or timed it out) before it
            # answered anything: once more on a new one, as the client's own Retry does.
            return await self._run(packed, len(commands))

    async def _run(self, packed: bytes, count: int) -> list[Any]:
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        self._answered = False
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    # No timeout of its own per reply: guard() bounds the batch.
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
                self._answered = True
            return replies
        except BaseException:
            self._connection = None
            await asyncio.shield(connection.disconnect(nowait=True))
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)


def is_noscript(result: object) -> bool:
    """A pipeline reply saying the server lost our script (it restarted): load it, resend."""
    return isinstance(result, NoScriptError)
