"""One relay stream as a :class:`~exec_server.transport.channel.MessageChannel`.

A :class:`RelayStreamChannel` is created by its
:class:`~exec_server.transport.relay_connection.RelayConnection` for every stream
(opened by this side, or by the peer) and fed the stream's messages; sending goes back
through the connection's multiplexer (``StreamMux.send_message``), waiting for progress
while the stream's send window is full.

Limits (from the connection's :class:`~exec_server.transport.relay_connection.RelayConfig`):
once ``inbox_hold_bytes`` wait undelivered on a reliable stream, the multiplexer holds
the stream's events (the peer is pushed back) until half of them are read; a legacy
stream whose inbox would pass ``max_channel_inbox_bytes`` is refused (the connection
resets it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from ..relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from ..relay.events import PeerMode
from ..relay.frame_encoder import OutboundPayload
from ..relay.stream_mux import MuxStream
from .channel import ChannelClosed, MessageTooLargeForTransport

if TYPE_CHECKING:
    from .relay_connection import RelayConnection

__all__ = ["RelayStreamChannel"]


class RelayStreamChannel:
    """One relay stream as a message channel."""

    transport_name = "relay"
    parse_error_prefix = "failed to parse relay JSON-RPC message from exec-server relay"

    def __init__(self, connection: RelayConnection, stream: MuxStream) -> None:
        self._connection = connection
        self.stream = stream
        """The relay stream, for reading its state and counters; only the connection's
        multiplexer drives it."""
        self.stream_id = stream.stream_id
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._readable = asyncio.Event()
        self._end_reason: str | None = None
        self._held = False

    @property
    def ended(self) -> bool:
        return self._end_reason is not None

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # --- fed by the connection ---------------------------------------------------

    def _deliver(self, payload: bytes) -> bool:
        if self._end_reason is not None:
            return True
        config = self._connection.config
        if self._inbox_bytes + len(payload) > config.max_channel_inbox_bytes:
            return False
        self._inbox.append(payload)
        self._inbox_bytes += len(payload)
        self._readable.set()
        if (
            not self._held
            and self._inbox_bytes >= config.inbox_hold_bytes
            and self.stream.mode is PeerMode.RELIABLE
        ):
            self._held = True
            self._connection.mux.hold_events(self.stream_id)
        return True

    def end(self, reason: str) -> None:
        """End the channel (its stream is not reset: see :meth:`close`)."""
        if self._end_reason is None:
            self._end_reason = reason
        self._readable.set()
        self._connection.notify_progress()  # a sender waiting for window space must see it

    # --- MessageChannel ----------------------------------------------------------

    async def receive(self) -> bytes:
        while not self._inbox:
            if self._end_reason is not None:
                raise ChannelClosed(self._end_reason)
            self._readable.clear()
            await self._readable.wait()
        payload = self._inbox.popleft()
        self._inbox_bytes -= len(payload)
        if self._held and self._inbox_bytes <= self._connection.config.inbox_hold_bytes // 2:
            self._held = False
            self._connection.release_events(self.stream_id)
        return payload

    async def send(self, message: OutboundPayload) -> None:
        """Send one message: ``bytes``, or a ``message_with_headroom`` view, which the
        relay writer frames in place (one copy fewer on the way to the socket)."""
        conn = self._connection
        while True:
            if self._end_reason is not None:
                raise ChannelClosed(self._end_reason)
            try:
                conn.send_message(self.stream_id, message)
            except SendBlocked:
                await conn.progress.wait()
                continue
            except MessageTooLarge as exc:
                raise MessageTooLargeForTransport(str(exc)) from None
            except StreamClosed as exc:
                self.end(str(exc))
                raise ChannelClosed(self._end_reason) from None
            return

    async def close(self, reason: str | None = None) -> None:
        if self._end_reason is not None:
            return
        self.end(reason or "closed")
        self._connection.close_stream(self.stream_id, reason or "closed")
