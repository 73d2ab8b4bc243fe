"""A scripted NATS server on loopback for the client's failure paths: each connection is
handed to a coroutine that decides what the server says (a handshake, an -ERR, silence,
a stall), which a real nats-server cannot be made to do on cue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["FakeNats", "Peer"]


class Peer:
    """One client connection as the server sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index
        """0 for the first connection the server accepted, then 1, 2, ..."""
        self.reader = reader
        self.writer = writer
        self.connect: dict[str, Any] | None = None
        """The client's CONNECT body, once :meth:`handshake` has read it."""

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def info(self, **fields: Any) -> None:
        body = {"server_id": "fake", "max_payload": 1048576, "headers": True, **fields}
        self.send(b"INFO " + json.dumps(body).encode() + b"\r\n")

    async def handshake(self, **fields: Any) -> None:
        """INFO (with ``fields``), then the client's CONNECT and PING answered."""
        self.info(**fields)
        line = await self.reader.readline()
        assert line.startswith(b"CONNECT "), line
        self.connect = json.loads(line[8:])
        assert await self.reader.readline() == b"PING\r\n"
        self.send(b"PONG\r\n")

    async def serve(self, published: list[tuple[str, bytes]] | None = None) -> None:
        """Answer PINGs and record what is published, until the client goes."""
        while line := await self.reader.readline():
            verb, *args = line.split()
            if verb == b"PING":
                self.send(b"PONG\r\n")
            elif verb in (b"PUB", b"HPUB"):
                body = await self.reader.readexactly(int(args[-1]) + 2)
                if published is not None:
                    published.append((args[0].decode(), body[:-2]))

    def close(self) -> None:
        self.writer.close()


class FakeNats:
    """``async with FakeNats(script) as server``: ``script(peer)`` runs per connection
    (the connection is closed when it returns); every script is cancelled and awaited
    on exit."""

    def __init__(self, script: Callable[[Peer], Awaitable[None]]) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> FakeNats:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers:
            peer.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        try:
            await self._script(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server's exit: asyncio's own callback must not see a cancelled task
        finally:
            writer.close()
