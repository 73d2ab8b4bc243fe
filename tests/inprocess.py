"""Raw JSON-RPC peers of an in-process server over memory channels (test support).

Two kinds of server side: a plain :class:`MemoryChannel`, which the connection pulls
from, and :class:`EagerServerChannel`, which hands each message over from an
event-loop callback as the local websocket does (the connection's eager path).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import msgspec
from memory_channel import MemoryChannel, memory_channel_pair

from exec_server.environment.server import ExecServer
from exec_server.transport.channel import ChannelClosed, MalformedFrame

RECV_TIMEOUT_S = 5.0


_EOF = object()


class EagerServerChannel:
    """The server side of an eager pair: messages arrive through loop callbacks
    (never in a task, as with picows) and are offered to ``on_input``."""

    transport_name = "memory"
    parse_error_prefix = "failed to parse memory JSON-RPC message from exec-server memory"

    def __init__(self, to_client: asyncio.Queue[bytes | object]) -> None:
        self._to_client = to_client
        self._inbox: deque[bytes | MalformedFrame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.end_reason: str | None = None
        self.on_input: Any = None

    def deliver(self, item: bytes | MalformedFrame) -> None:
        if self.end_reason is None:
            self._inbox.append(item)
            self._wake()

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_input is not None:
            self.on_input()

    def take(self) -> bytes | MalformedFrame | None:
        return self._inbox.popleft() if self._inbox else None

    async def receive(self) -> bytes | MalformedFrame:
        while True:
            item = self.take()
            if item is not None:
                return item
            if self.end_reason is not None:
                raise ChannelClosed(self.end_reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def send(self, message: bytes) -> None:
        if self._closed:
            raise ChannelClosed("closed")
        self._to_client.put_nowait(message)

    async def close(self, reason: str | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._to_client.put_nowait(_EOF)
        self.end(reason or "closed")


class EagerClientChannel:
    """The harness side of an eager pair (the test's end): what it sends reaches the
    server in a fresh event-loop callback."""

    def __init__(self) -> None:
        self._from_server: asyncio.Queue[bytes | object] = asyncio.Queue()
        self.server_side = EagerServerChannel(self._from_server)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def send(self, message: bytes) -> None:
        if self._closed:
            raise ChannelClosed("closed")
        self._loop.call_soon(self.server_side.deliver, message)

    def send_raw(self, item: bytes | MalformedFrame) -> None:
        self._loop.call_soon(self.server_side.deliver, item)

    def shutdown_send(self) -> None:
        """Half-close: the server's input ends; it can still answer."""
        self._loop.call_soon(self.server_side.end, "peer closed")

    async def receive(self) -> bytes:
        if self._closed:
            raise ChannelClosed("closed")
        item = await self._from_server.get()
        if item is _EOF:
            self._closed = True
            raise ChannelClosed("server closed")
        assert isinstance(item, bytes)
        return item

    async def close(self, reason: str | None = None) -> None:
        self._closed = True
        self._loop.call_soon(self.server_side.end, reason or "peer closed")


class RawConnection:
    """A raw JSON-RPC peer over a memory channel, for protocol-level assertions."""

    def __init__(
        self, channel: MemoryChannel | EagerClientChannel, task: asyncio.Task[None]
    ) -> None:
        self.channel = channel
        self.task = task
        self._next_id = 0
        self.notifications: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else msgspec.json.encode(message)
        await self.channel.send(data)

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.channel.receive(), timeout)
        assert isinstance(raw, bytes)
        decoded: dict[str, Any] = msgspec.json.decode(raw)
        return decoded

    async def request(
        self, method: str, params: Any = None, timeout: float = RECV_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a request; return its response, stashing notifications that precede it."""
        self._next_id += 1
        rid = self._next_id
        msg: dict[str, Any] = {"id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)
        while True:
            reply = await self.recv(timeout)
            if reply.get("id") == rid:
                return reply
            self.notifications.append(reply)

    async def initialize(self, resume: str | None = None) -> str:
        reply = await self.request("initialize", {"clientName": "test", "resumeSessionId": resume})
        assert "result" in reply, reply
        await self.send({"method": "initialized", "params": {}})
        session_id: str = reply["result"]["sessionId"]
        return session_id

    async def closed(self, timeout: float = RECV_TIMEOUT_S) -> bool:
        """True once the server closed this connection (drains anything pending)."""
        try:
            while True:
                await asyncio.wait_for(self.channel.receive(), timeout)
        except ChannelClosed:
            return True

    async def close(self) -> None:
        await self.channel.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, RECV_TIMEOUT_S)


class InProcessServer:
    """An :class:`ExecServer` reached over memory channels; ``eager`` selects the
    channel kind (see the module docstring)."""

    def __init__(self, server: ExecServer, *, eager: bool = False) -> None:
        self.server = server
        self.eager = eager
        self.connections: list[RawConnection] = []

    def connect(self) -> RawConnection:
        client_side: MemoryChannel | EagerClientChannel
        if self.eager:
            client_side = EagerClientChannel()
            server_side: Any = client_side.server_side
        else:
            client_side, server_side = memory_channel_pair()
        task = asyncio.get_running_loop().create_task(self.server.serve_channel(server_side))
        conn = RawConnection(client_side, task)
        self.connections.append(conn)
        return conn
