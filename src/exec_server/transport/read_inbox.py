"""Messages a websocket has read and its consumer has not taken yet, bounded.

The three picows sockets (the SDK's client, the environment's local listener, the
rendezvous' relay sockets) parse frames in their own callback, faster than a slow
consumer may take them. Each keeps a :class:`ReadInbox`: above ``limit`` counted bytes
the socket stops reading (TCP then pushes back on the sender), and at half of it reading
resumes. Every message counts :data:`MESSAGE_OVERHEAD_BYTES` besides its payload, so
empty or tiny frames cannot be read without bound either.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import picows

__all__ = ["MESSAGE_OVERHEAD_BYTES", "ReadInbox", "set_socket_reading"]

MESSAGE_OVERHEAD_BYTES = 64
"""What a waiting message counts besides its payload (its share of the deque, the
object itself)."""

M = TypeVar("M")


def set_socket_reading(transport: picows.WSTransport | None, paused: bool) -> None:
    """Pause or resume reading from a picows socket (nothing once it is gone)."""
    if transport is None or transport.is_disconnected:
        return
    with contextlib.suppress(RuntimeError, AttributeError):
        underlying = transport.underlying_transport
        if paused:
            underlying.pause_reading()
        else:
            underlying.resume_reading()


class ReadInbox(Generic[M]):
    """A FIFO of read messages that pauses its socket's reading when it holds too much.

    ``size`` gives a message's payload size; ``set_paused`` pauses (``True``) or
    resumes (``False``) the socket's reading.
    """

    __slots__ = ("_limit", "_messages", "_set_paused", "_size", "counted", "paused")

    def __init__(
        self, limit: int, size: Callable[[M], int], set_paused: Callable[[bool], None]
    ) -> None:
        self._limit = limit
        self._size = size
        self._set_paused = set_paused
        self._messages: deque[M] = deque()
        self.counted = 0
        """Bytes counted against ``limit`` (payloads plus the per-message overhead)."""
        self.paused = False

    def __len__(self) -> int:
        return len(self._messages)

    def put(self, message: M) -> None:
        self._messages.append(message)
        self.counted += self._size(message) + MESSAGE_OVERHEAD_BYTES
        if self.counted > self._limit and not self.paused:
            self.paused = True
            self._set_paused(True)

    def take(self) -> M | None:
        """The oldest message, or ``None`` when none is waiting."""
        if not self._messages:
            return None
        message = self._messages.popleft()
        self.counted -= self._size(message) + MESSAGE_OVERHEAD_BYTES
        if self.paused and self.counted <= self._limit // 2:
            self.paused = False
            self._set_paused(False)
        return message

    def clear(self) -> None:
        """Drop every waiting message (the socket is failing), and let the socket read
        again: its close handshake has to read the peer's reply (or end of stream)."""
        self._messages.clear()
        self.counted = 0
        if self.paused:
            self.paused = False
            self._set_paused(False)
