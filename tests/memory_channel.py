"""Test support: an in-process channel pair, a server and a client in one event loop.

Tests exercise the connection processor and the SDK without sockets through it
(``send_raw`` and ``shutdown_send`` are the test hooks). Each direction is a bounded
queue, so a consumer that stops reading pushes back on the producer as a socket
would.
"""

from __future__ import annotations

import asyncio

from exec_server.transport.channel import ChannelClosed, MalformedFrame

#: Messages buffered per direction before ``send`` waits.
DEFAULT_QUEUE_MESSAGES = 256

_EOF = object()


class _Injected:
    """Input placed by a test hook; not counted against the sender's cap."""

    def __init__(self, item: bytes | MalformedFrame) -> None:
        self.item = item


class _Pipe:
    """One direction: an unbounded queue whose data items are capped by a semaphore
    (the end-of-stream marker bypasses the cap, so closing never waits)."""

    def __init__(self, max_messages: int) -> None:
        self.queue: asyncio.Queue[bytes | MalformedFrame | object] = asyncio.Queue()
        self.space = asyncio.Semaphore(max_messages)


class MemoryChannel:
    transport_name = "memory"
    parse_error_prefix = "failed to parse memory JSON-RPC message from exec-server memory"

    def __init__(self, inbox: _Pipe, outbox: _Pipe) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False
        self._eof = False
        self._peer: MemoryChannel | None = None
        self.close_reason: str | None = None

    async def receive(self) -> bytes | MalformedFrame:
        if self._closed or self._eof:
            raise ChannelClosed(self.close_reason or "closed")
        item = await self._inbox.queue.get()
        if item is _EOF:
            self._eof = True
            reason = self._peer.close_reason if self._peer else None
            raise ChannelClosed(reason or "peer closed")
        if isinstance(item, _Injected):
            return item.item
        self._inbox.space.release()
        assert isinstance(item, bytes | MalformedFrame)
        return item

    async def send(self, message: bytes) -> None:
        if self._closed or (self._peer is not None and self._peer._closed):
            raise ChannelClosed(self.close_reason or "closed")
        await self._outbox.space.acquire()
        self._outbox.queue.put_nowait(message)

    def send_raw(self, item: bytes | MalformedFrame) -> None:
        """Test hook: deliver any item, even a transport-level malformed frame, to the peer."""
        self._outbox.queue.put_nowait(_Injected(item))

    def shutdown_send(self) -> None:
        """Half-close: the peer's ``receive`` ends, while the peer can still send to us."""
        self._outbox.queue.put_nowait(_EOF)

    async def close(self, reason: str | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        self._outbox.queue.put_nowait(_EOF)
        self._inbox.queue.put_nowait(_EOF)


def memory_channel_pair(
    max_messages: int = DEFAULT_QUEUE_MESSAGES,
) -> tuple[MemoryChannel, MemoryChannel]:
    """Return ``(a, b)``: what ``a`` sends ``b`` receives and vice versa."""
    a_to_b = _Pipe(max_messages)
    b_to_a = _Pipe(max_messages)
    a = MemoryChannel(b_to_a, a_to_b)
    b = MemoryChannel(a_to_b, b_to_a)
    a._peer = b
    b._peer = a
    return a, b
