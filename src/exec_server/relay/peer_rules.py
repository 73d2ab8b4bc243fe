"""What a reliable stream does in each peer mode, in one table (h11's ``_state.py`` rule).

A stream starts ``PROBING`` (initiator) and resolves to ``RELIABLE`` (the peer is this
project's relay) or ``LEGACY`` (a Codex 0.133/0.137 endpoint); ``docs/relay.md`` tells
why each rule is what it is. :class:`~exec_server.relay.reliable_stream.ReliableStream`
asks :data:`RULES` instead of comparing modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exec_server.relay.events import PeerMode
from exec_server.relay.stream_config import ReliableStreamConfig

__all__ = ["RULES", "ModeRules"]


@dataclass(frozen=True, slots=True)
class ModeRules:
    """The behaviour of a stream while its peer is in :attr:`mode`."""

    mode: PeerMode
    flags_frames: bool
    """Outbound frames carry the capability flag and real acks, data uses window seqs,
    and inbound acks are applied. Off, frames look exactly like Codex's."""
    retains: bool
    """Sent data is kept until acknowledged, and the stream survives a physical
    disconnect (it resumes on the next socket). Off, a disconnect ends it."""
    retransmits: bool
    """Lost or unacknowledged segments are sent again."""
    keepalive: bool
    """Heartbeats, standalone acks, retransmission timers and the idle timeout run."""
    negotiates: bool
    """The initiator repeats its flagged claim and gives up after the negotiation
    timeout; messages over one segment wait (``SendBlocked``) until it resolves."""
    message_limit: Callable[[ReliableStreamConfig], int]
    """The largest message :meth:`send_message` takes ..."""
    too_large: str
    """... and why a larger one is refused (``MessageTooLarge``)."""


RULES: dict[PeerMode, ModeRules] = {
    PeerMode.PROBING: ModeRules(
        PeerMode.PROBING,
        flags_frames=True,
        retains=True,
        retransmits=False,  # a Codex peer would execute a re-sent request twice
        keepalive=False,  # a Codex peer drops ack_frame/heartbeat
        negotiates=True,
        message_limit=lambda c: max(c.max_message_bytes, c.legacy_max_message_bytes),
        too_large="over the stream's max_message_bytes",
    ),
    PeerMode.RELIABLE: ModeRules(
        PeerMode.RELIABLE,
        flags_frames=True,
        retains=True,
        retransmits=True,
        keepalive=True,
        negotiates=False,
        message_limit=lambda c: c.max_message_bytes,
        too_large="over the stream's max_message_bytes",
    ),
    PeerMode.LEGACY: ModeRules(
        PeerMode.LEGACY,
        flags_frames=False,
        retains=False,
        retransmits=False,
        keepalive=False,
        negotiates=False,
        message_limit=lambda c: c.legacy_max_message_bytes,
        too_large="the peer is a legacy Codex endpoint, which cannot take it in one frame",
    ),
}
"""The rules of each mode."""
