"""Test support: a simulated Codex 0.133 harness speaking raw relay frames on a websocket.

It behaves as ``codex-observed.md`` section 6 describes the real harness: its first frame
is ``resume{next_seq: 0}`` on a fresh UUIDv4 stream id, then one ``data`` frame per
JSON-RPC message with ``seq`` 0, 1, 2, ..., ``ack = 0``, ``ack_bits = 0`` and segment
``0/1``. It never acks, never sends heartbeats and never segments. Frames of other streams
are ignored; everything received for its own stream is kept in :attr:`frames` so a test
can check exactly what the environment put on the wire.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
from aiohttp import ClientWebSocketResponse, WSMsgType

from exec_server.relay.frame_codec import (
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
    resume_frame,
)

RECEIVE_TIMEOUT_S = 10.0


class SimulatedCodexHarness:
    """One Codex-style relay stream over a raw websocket (see the module docstring)."""

    def __init__(self, ws: ClientWebSocketResponse, stream_id: str | None = None) -> None:
        self.ws = ws
        self.stream_id = stream_id or str(uuid.uuid4())
        self.next_seq = 0
        self._next_id = 0
        self.frames: list[RelayFrame] = []
        """Every frame received for this stream, in arrival order."""
        self.raw: list[bytes] = []
        """The same frames as received bytes."""
        self.notifications: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.other_streams = 0

    async def open(self) -> None:
        """Claim the stream as Codex does: ``resume{next_seq: 0}`` (bytes ``3a 00``)."""
        await self.ws.send_bytes(encode_frame(resume_frame(self.stream_id, 0)))

    async def send(self, message: dict[str, Any]) -> None:
        frame = data_frame(self.stream_id, self.next_seq, msgspec.json.encode(message))
        self.next_seq = (self.next_seq + 1) & 0xFFFF_FFFF
        await self.ws.send_bytes(encode_frame(frame))

    async def notify(self, method: str, params: Any) -> None:
        await self.send({"method": method, "params": params})

    async def request(
        self, method: str, params: Any = None, timeout_s: float = RECEIVE_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a request; return its response (notifications before it are kept)."""
        self._next_id += 1
        request_id = self._next_id
        await self.send({"id": request_id, "method": method, "params": params})
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self._next_message()
                if message is None:
                    continue
                if "method" in message:
                    self.notifications.append(message)
                    continue
                self.responses.append(message)
                if message.get("id") == request_id:
                    return message

    async def initialize(self, client_name: str = "codex-environment") -> str:
        reply = await self.request(
            "initialize", {"clientName": client_name, "resumeSessionId": None}
        )
        assert "result" in reply, reply
        await self.notify("initialized", {})
        session_id: str = reply["result"]["sessionId"]
        return session_id

    async def drain(self, seconds: float) -> None:
        """Keep reading for ``seconds``: anything late (a retransmission) is recorded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    message = await self._next_message()
            except TimeoutError:
                return
            if message is None:
                continue
            (self.notifications if "method" in message else self.responses).append(message)

    async def _next_message(self) -> dict[str, Any] | None:
        """The next JSON-RPC message of this stream; ``None`` for anything else."""
        msg = await self.ws.receive()
        assert msg.type is WSMsgType.BINARY, f"unexpected websocket message {msg.type}"
        data: bytes = msg.data
        frame = decode_frame(data)
        if frame.stream_id != self.stream_id:
            self.other_streams += 1
            return None
        self.frames.append(frame)
        self.raw.append(data)
        if frame.kind != "data":
            return None  # recorded; a Codex harness ignores ack/resume/heartbeat
        decoded: dict[str, Any] = msgspec.json.decode(frame.data.payload)
        return decoded
