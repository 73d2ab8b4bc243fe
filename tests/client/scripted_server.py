"""A scripted JSON-RPC server on a memory channel, to pin down what the SDK sends.

It answers methods from a table (a result, an :class:`Error`, or :data:`SILENT` for
no answer at all), ``initialize`` by default with a session id (and, optionally, a
0.171-style ``environmentInfo``), anything else with -32601; and it records every
message it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from memory_channel import MemoryChannel, memory_channel_pair

from exec_server.transport.channel import ChannelClosed

#: Sentinel answer: never reply.
SILENT = object()


@dataclass
class Error:
    code: int
    message: str


@dataclass
class ScriptedServer:
    answers: dict[str, Any] = field(default_factory=dict)
    environment_info: dict[str, Any] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    channel: MemoryChannel | None = None

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [m.get("params") or {} for m in self.received if m.get("method") == method]

    async def serve(self, channel: MemoryChannel) -> None:
        self.channel = channel
        with contextlib.suppress(ChannelClosed):
            while True:
                raw = await channel.receive()
                assert isinstance(raw, bytes)
                message = msgspec.json.decode(raw)
                self.received.append(message)
                if "id" not in message:
                    continue
                await self._answer(channel, message)

    async def _answer(self, channel: MemoryChannel, message: dict[str, Any]) -> None:
        method = message["method"]
        answer: Any
        if method in self.answers:
            answer = self.answers[method]
        elif method == "initialize":
            answer = {"sessionId": "11111111-2222-3333-4444-555555555555"}
            if self.environment_info is not None:
                answer["environmentInfo"] = self.environment_info
        else:
            answer = Error(-32601, f"no `{method}` here")
        if answer is SILENT:
            return
        if isinstance(answer, Error):
            reply = {"id": message["id"], "error": {"code": answer.code, "message": answer.message}}
        else:
            reply = {"id": message["id"], "result": answer}
        await channel.send(msgspec.json.encode(reply))

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        assert self.channel is not None
        await self.channel.send(msgspec.json.encode({"method": method, "params": params}))


@contextlib.asynccontextmanager
async def scripted(server: ScriptedServer) -> AsyncIterator[MemoryChannel]:
    """Run ``server`` on one end of a memory channel pair; yield the client's end."""
    client_end, server_end = memory_channel_pair()
    task = asyncio.ensure_future(server.serve(server_end))
    try:
        yield client_end
    finally:
        await server_end.close("test over")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
