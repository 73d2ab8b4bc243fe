"""Raw JSON-RPC peers of an in-process server over memory channels (test support)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from exec_server.environment.server import ExecServer
from exec_server.transport.channel import ChannelClosed
from exec_server.transport.memory import MemoryChannel, memory_channel_pair

RECV_TIMEOUT_S = 5.0


class RawConnection:
    """A raw JSON-RPC peer over a memory channel, for protocol-level assertions."""

    def __init__(self, channel: MemoryChannel, task: asyncio.Task[None]) -> None:
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
    def __init__(self, server: ExecServer) -> None:
        self.server = server
        self.connections: list[RawConnection] = []

    def connect(self) -> RawConnection:
        client_side, server_side = memory_channel_pair()
        task = asyncio.get_running_loop().create_task(self.server.serve_channel(server_side))
        conn = RawConnection(client_side, task)
        self.connections.append(conn)
        return conn
