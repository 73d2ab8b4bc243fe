"""Events the sans-IO relay hands to its owner (``next_event()`` of a stream or the mux).

Small immutable values (frozen ``msgspec.Struct`` s: cheap to create, one per message),
one per thing that happened; every event names its stream so the multiplexer can pass
stream events through unchanged.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class PeerMode(StrEnum):
    """What the stream knows about the peer's relay implementation."""

    PROBING = "probing"
    """Nothing heard from the peer yet: send only what a Codex peer would accept (unsegmented
    messages, never a retransmission), but keep copies in case the peer turns out reliable."""
    RELIABLE = "reliable"
    """The peer is this project's relay: acks, retransmission, segmentation, resume."""
    LEGACY = "legacy"
    """The peer is a Codex 0.133/0.137-style endpoint: fire-and-forget, one frame per message."""


class MessageReceived(msgspec.Struct, frozen=True, gc=False):
    """One whole message (reassembled if it was segmented), in the peer's send order."""

    stream_id: str
    payload: bytes
    traceparent: str | None = None
    tracestate: str | None = None


class StreamReset(msgspec.Struct, frozen=True, gc=False):
    """The stream ended. ``remote`` is true when the peer sent ``reset{reason}``; false when
    this side ended it (protocol violation by the peer, idle timeout, connection loss of a
    stream that cannot resume). No further event follows for this stream."""

    stream_id: str
    reason: str
    remote: bool


class PeerResumed(msgspec.Struct, frozen=True, gc=False):
    """The peer sent ``resume`` (it reattached): unacknowledged data was queued again."""

    stream_id: str
    next_seq: int


class PeerModeResolved(msgspec.Struct, frozen=True, gc=False):
    """Negotiation finished: the peer is ``RELIABLE`` or ``LEGACY``. Emitted once."""

    stream_id: str
    mode: PeerMode


class StreamOpened(msgspec.Struct, frozen=True, gc=False):
    """The multiplexer (environment side) created a stream for a new ``stream_id``."""

    stream_id: str


StreamEvent = MessageReceived | StreamReset | PeerResumed | PeerModeResolved
"""Events of one :class:`~exec_server.relay.reliable_stream.ReliableStream`."""

MuxEvent = StreamEvent | StreamOpened
"""Events of a :class:`~exec_server.relay.stream_mux.StreamMux`."""
