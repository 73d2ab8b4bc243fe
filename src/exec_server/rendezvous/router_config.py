"""The router's bounds, close codes, reasons and counters (see
:mod:`~exec_server.rendezvous.router` for the rules they belong to)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from ..relay.frame_codec import INBOUND_LIMITS, FrameLimits

__all__ = [
    "DEFAULT_ENVIRONMENT_GRACE_S",
    "DEFAULT_HARNESS_GRACE_S",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "DEFAULT_MAX_SOCKET_BUFFER_BYTES",
    "DEFAULT_MAX_STREAMS_PER_ENVIRONMENT",
    "DEFAULT_MAX_STREAM_BUFFER_BYTES",
    "DEFAULT_SLOW_HARNESS_TIMEOUT_S",
    "DEFAULT_STREAM_PAUSE_BYTES",
    "PROTOCOL_ERROR_CLOSE_CODE",
    "REPLACED_CLOSE_CODE",
    "TOO_BIG_CLOSE_CODE",
    "UNSUPPORTED_DATA_CLOSE_CODE",
    "Direction",
    "DropReason",
    "ProtocolErrorReason",
    "ResetReason",
    "RouterConfig",
    "RouterStats",
]

DEFAULT_ENVIRONMENT_GRACE_S = 30.0
"""Seconds an environment's streams wait for it to reconnect."""

DEFAULT_HARNESS_GRACE_S = 30.0
"""Seconds a harness's streams wait for a socket with the same URL nonce."""

DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
"""Outbound bytes queued per socket before a reliable sender's frames are dropped
(harness), the harness readers wait (environment), or legacy streams are paused."""

DEFAULT_MAX_QUEUE_FRAMES = 8192
"""Outbound frames queued per socket, same policy as the byte bound (reliable frames)."""

DEFAULT_STREAM_PAUSE_BYTES = 2 * 1024 * 1024
"""Queued bytes of one legacy stream at which its environment is asked to pause it."""

DEFAULT_MAX_STREAM_BUFFER_BYTES = 32 * 1024 * 1024
"""Queued bytes of one legacy stream beyond which it is reset (``harness_too_slow``)."""

DEFAULT_MAX_SOCKET_BUFFER_BYTES = 64 * 1024 * 1024
"""Queued bytes of one harness socket beyond which the legacy stream adding to them is
reset (``harness_too_slow``)."""

DEFAULT_SLOW_HARNESS_TIMEOUT_S = 60.0
"""Longest a legacy stream stays paused for its harness before it is reset."""

DEFAULT_MAX_STREAMS_PER_ENVIRONMENT = 4096
"""Routed streams per environment id (matches the environment's own stream limit)."""

REPLACED_CLOSE_CODE = 4000
"""Websocket close code sent to an environment socket replaced by a newer one."""

PROTOCOL_ERROR_CLOSE_CODE = 1002
"""Websocket close code for an invalid relay frame (RFC 6455 protocol error)."""

UNSUPPORTED_DATA_CLOSE_CODE = 1003
"""Websocket close code for a text message: the relay is binary only."""

TOO_BIG_CLOSE_CODE = 1009
"""Websocket close code for a message over the size limit."""


class Direction(StrEnum):
    HARNESS_TO_ENVIRONMENT = "harness_to_environment"
    ENVIRONMENT_TO_HARNESS = "environment_to_harness"


class DropReason(StrEnum):
    """Reasons a well-formed frame was not forwarded."""

    UNKNOWN_STREAM = "unknown_stream"
    """An environment frame for a stream no harness owns."""
    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    """A harness frame for a stream another harness socket owns."""
    ENVIRONMENT_OFFLINE = "environment_offline"
    """A harness frame while its environment has no socket."""
    HARNESS_OFFLINE = "harness_offline"
    """An environment frame for a stream whose owner socket is gone (within grace)."""
    HARNESS_QUEUE_FULL = "harness_queue_full"
    """A reliable sender's frame that did not fit the owning harness socket's queue."""
    HARNESS_TOO_SLOW = "harness_too_slow"
    """A legacy frame past the bounds of a slow harness: the stream was reset instead."""
    TOO_MANY_STREAMS = "too_many_streams"
    """A new stream over ``max_streams_per_environment``."""
    REPLACED_SOCKET = "replaced_socket"
    """A frame from an environment socket that a newer one has replaced."""
    REFUSED_FROM_NODE = "refused_from_node"
    """Cluster: a frame another node forwarded that the shared records do not allow
    (forged, or from a node that lost the stream or the environment)."""
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    """Cluster: a new stream could not be recorded in the shared state."""


class ResetReason(StrEnum):
    """Reasons of the resets the router itself sends (part of the wire contract)."""

    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    STREAM_RECLAIMED = "stream_reclaimed"
    HARNESS_OFFLINE = "harness_offline"
    ENVIRONMENT_OFFLINE = "environment_offline"
    TOO_MANY_STREAMS = "too_many_streams"
    HARNESS_TOO_SLOW = "harness_too_slow"
    RELAY_ROUTE_LOST = "relay_route_lost"
    """Cluster: frames between two nodes were lost (a legacy stream cannot recover)."""
    CLUSTER_UNAVAILABLE = "rendezvous_unavailable"
    """Cluster: the shared state did not answer while the stream was being claimed."""


class ProtocolErrorReason(StrEnum):
    """Why a socket was closed for a protocol error, besides ``InvalidFrameReason``."""

    TEXT_FRAME = "text_frame"
    """A websocket text message; the relay is binary only."""
    OVERSIZE = "oversize"
    """A message over the size limit (``InvalidFrameReason.OVERSIZE`` has the same value)."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    environment_grace_s: float = DEFAULT_ENVIRONMENT_GRACE_S
    harness_grace_s: float = DEFAULT_HARNESS_GRACE_S
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES
    stream_pause_bytes: int = DEFAULT_STREAM_PAUSE_BYTES
    max_stream_buffer_bytes: int = DEFAULT_MAX_STREAM_BUFFER_BYTES
    max_socket_buffer_bytes: int = DEFAULT_MAX_SOCKET_BUFFER_BYTES
    slow_harness_timeout_s: float = DEFAULT_SLOW_HARNESS_TIMEOUT_S
    max_streams_per_environment: int = DEFAULT_MAX_STREAMS_PER_ENVIRONMENT
    frame_limits: FrameLimits = INBOUND_LIMITS

    def __post_init__(self) -> None:
        if self.environment_grace_s < 0 or self.harness_grace_s < 0:
            raise ValueError("grace periods must not be negative")
        if self.max_queue_bytes <= 0 or self.max_queue_frames <= 0:
            raise ValueError("queue bounds must be positive")
        if not 0 < self.stream_pause_bytes <= self.max_stream_buffer_bytes:
            raise ValueError("need 0 < stream_pause_bytes <= max_stream_buffer_bytes")
        if self.max_socket_buffer_bytes < self.max_queue_bytes:
            raise ValueError("max_socket_buffer_bytes must be at least max_queue_bytes")
        if self.slow_harness_timeout_s <= 0:
            raise ValueError("slow_harness_timeout_s must be positive")
        if self.max_streams_per_environment <= 0:
            raise ValueError("max_streams_per_environment must be positive")


@dataclass
class RouterStats:
    """Monotonic counters; :mod:`~exec_server.rendezvous.metrics` exports them."""

    frames_routed: Counter[str] = field(default_factory=Counter)
    """By :class:`Direction`."""
    bytes_routed: Counter[str] = field(default_factory=Counter)
    """By :class:`Direction`; websocket message bytes."""
    dropped: Counter[str] = field(default_factory=Counter)
    """By :class:`DropReason`."""
    resets_sent: Counter[str] = field(default_factory=Counter)
    """By :class:`ResetReason`."""
    protocol_errors: Counter[str] = field(default_factory=Counter)
    """Sockets closed for a protocol error, by :class:`ProtocolErrorReason` or
    ``InvalidFrameReason`` value."""
    sockets_accepted: Counter[str] = field(default_factory=Counter)
    """By role."""
    reclaims: int = 0
    """Streams taken over by a newer socket with the owner's nonce."""
    pauses: int = 0
    """Legacy streams an environment was asked to pause for a slow harness."""
