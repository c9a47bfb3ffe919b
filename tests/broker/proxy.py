"""A TCP proxy in front of RabbitMQ, to cut a live connection or make the broker unreachable on demand.

It works with any broker URL, including one we did not start and cannot restart.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._changed = asyncio.Condition()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)

    async def _on_client(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection(*self._target)
        self._writers |= {client, upstream}
        async with self._changed:
            self._accepted += 1
            self._changed.notify_all()
        pipes = [
            asyncio.create_task(self._pipe(client_reader, upstream)),
            asyncio.create_task(self._pipe(upstream_reader, client)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        self._writers.discard(writer)

    async def wait_accepted(self, count: int) -> None:
        """Until `count` client connections have been accepted since start."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._accepted >= count)

    def drop(self) -> None:
        """Cut every live connection, as a network failure would (no AMQP close handshake)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)
