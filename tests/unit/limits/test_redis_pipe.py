"""The limiter's own connection (redis_client.Pipe): a kept connection the server dropped is
retried once, but never a batch the server had begun to answer (its charges would count twice).
Against a small RESP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.limits.redis_client import Pipe


class RespServer:
    """Answers each PING with +PONG (and anything else with +OK); `cut_after` replies into a connection's batch number
    `cut_batch` (counted over all connections), it closes the connection instead."""

    def __init__(self) -> None:
        self.batches = 0
        self.cut_batch = -1
        self.cut_after = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while data := await reader.read(65536):
            commands = data.count(b"PING")
            if not commands:  # the client's hello on connecting (CLIENT SETINFO ...): +OK each
                writer.write(b"+OK\r\n" * len(re.findall(rb"(?:^|\r\n)\*\d+\r\n", data)))
                await writer.drain()
                continue
            batch, self.batches = self.batches, self.batches + 1
            replies = self.cut_after if batch == self.cut_batch else commands
            writer.write(b"+PONG\r\n" * replies)
            await writer.drain()
            if batch == self.cut_batch:
                writer.close()
                return

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def resp() -> AsyncIterator[RespServer]:
    server = RespServer()
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    yield server
    server.server.close()
    for writer in server.writers:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for writer in server.writers), return_exceptions=True)
    await server.server.wait_closed()


async def test_a_batch_half_answered_is_not_sent_again(resp: RespServer) -> None:
    """The server answers one of a kept connection's two commands and drops it: the error is
    raised, and the batch reached the server once; the next batch goes on a new connection."""
    client = Redis(port=resp.port, protocol=2)
    pipe = Pipe(client)
    assert await pipe.run([("PING",)]) == [b"PONG"]
    resp.cut_batch, resp.cut_after = 1, 1
    with pytest.raises(RedisConnectionError):
        await pipe.run([("PING",), ("PING",)])
    assert resp.batches == 2
    assert await pipe.run([("PING",)]) == [b"PONG"]
    await pipe.close()
    await client.aclose()


async def test_a_kept_connection_dropped_before_any_reply_is_retried_once(resp: RespServer) -> None:
    """Dropped with no reply (a restart, an idle timeout): the batch goes again on a new
    connection and is answered."""
    client = Redis(port=resp.port, protocol=2)
    pipe = Pipe(client)
    assert await pipe.run([("PING",)]) == [b"PONG"]
    resp.cut_batch, resp.cut_after = 1, 0
    assert await pipe.run([("PING",), ("PING",)]) == [b"PONG", b"PONG"]
    assert resp.batches == 3
    await pipe.close()
    await client.aclose()
