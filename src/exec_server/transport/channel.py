"""The one seam between transports and the JSON-RPC layers above them.

A :class:`MessageChannel` carries whole JSON-RPC messages as encoded bytes. The
local websocket, stdio and a relay virtual stream all implement it, so the
connection processor (server side) and the RPC client never know which one they
run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Default ceiling for one inbound JSON-RPC message. A 256 MiB file is ~342 MiB of
#: base64, so 512 MiB leaves room for a 384 MiB file per message.
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024


class ChannelClosed(Exception):
    """The channel ended; ``reason`` says why when the transport knows."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "channel closed")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """Transport-level input that cannot be a message (answered with id -1)."""

    detail: str


class MessageChannel(Protocol):
    """A bidirectional stream of JSON-RPC messages.

    ``receive`` returns one message as UTF-8 bytes or ``str`` (websocket Text frames
    arrive decoded; re-encoding a 300 MiB message would only cost a copy), or a
    :class:`MalformedFrame`, and
    raises :class:`ChannelClosed` once the peer is gone. ``send`` applies the
    transport's backpressure and raises :class:`ChannelClosed` when it cannot
    deliver. ``close`` is idempotent.
    """

    #: Names the transport in logs, e.g. ``"websocket"`` or ``"stdio"``.
    transport_name: str
    #: How an answer to unparseable input begins (Codex's wording per transport).
    parse_error_prefix: str

    async def receive(self) -> bytes | str | MalformedFrame: ...

    async def send(self, message: bytes) -> None: ...

    async def close(self, reason: str | None = None) -> None: ...


class MessageTooLargeForTransport(Exception):
    """``send`` refused one message as too large for this transport or peer.

    The channel stays usable: the caller can answer with a smaller error instead
    (e.g. a relay peer that cannot take messages above 16 MiB).
    """
