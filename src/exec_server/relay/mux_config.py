"""The vocabulary of :class:`~exec_server.relay.stream_mux.StreamMux`: its limits
(:class:`MuxConfig`), which end it is (:class:`MuxRole`), why it drops a frame
(:class:`MuxDropReason`), and what it needs of a stream (:class:`MuxStream`).

Pure data; nothing here holds state or performs I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from exec_server.relay.events import PeerMode, StreamEvent
from exec_server.relay.frame_codec import INBOUND_LIMITS, FrameLimits, RelayFrame
from exec_server.relay.stream_config import ReliableStreamConfig, StreamStats

__all__ = [
    "MAX_PENDING_CONTROL_FRAMES",
    "MAX_RETIRED_STREAM_IDS",
    "MAX_STREAMS",
    "MuxConfig",
    "MuxDropReason",
    "MuxRole",
    "MuxStream",
]


class MuxStream(Protocol):
    """What the multiplexer needs of a stream: the verbs of
    :class:`~exec_server.relay.reliable_stream.ReliableStream`, which every stream the
    mux creates is. Other kinds are adopted with :meth:`StreamMux.adopt_stream` (the
    Noise relay's streams with a Codex peer, :mod:`exec_server.relay.noise.codex_stream`)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def mode(self) -> PeerMode: ...
    @property
    def stats(self) -> StreamStats: ...
    @property
    def is_closed(self) -> bool: ...
    @property
    def close_reason(self) -> str | None: ...
    @property
    def is_finished(self) -> bool: ...
    @property
    def has_events(self) -> bool: ...
    def send_message(
        self,
        payload: bytes,
        now: float,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None: ...
    def reset(self, reason: str) -> None: ...
    def next_frame(self, now: float) -> RelayFrame | None: ...
    def next_event(self) -> StreamEvent | None: ...
    def receive_frame(self, frame: RelayFrame, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def connection_lost(self, now: float) -> None: ...
    def on_reconnect(self, now: float) -> None: ...


MAX_STREAMS = 128
"""Live streams per socket (Codex ``MAX_ACTIVE_NOISE_RELAY_STREAMS``)."""

MAX_RETIRED_STREAM_IDS = 1024
"""Ended stream ids remembered to reject stale reliable frames."""

MAX_PENDING_CONTROL_FRAMES = 64
"""Queued mux-level replies (resets to rejected streams); more are dropped and counted."""


class MuxRole(StrEnum):
    """Which end of the relay this socket is."""

    HARNESS = "harness"
    """Opens streams; never creates one for an inbound frame."""
    ENVIRONMENT = "environment"
    """Accepts streams lazily on their first data frame."""


class MuxDropReason(StrEnum):
    """Mux-level reasons in :attr:`StreamMux.dropped` (besides ``InvalidFrameReason``)."""

    UNKNOWN_STREAM = "unknown_stream"
    """Harness side: data for a stream it never opened."""
    UNKNOWN_STREAM_CONTROL = "unknown_stream_control"
    """A non-data frame for a stream that does not exist: ignored, as in Codex."""
    TOO_MANY_STREAMS = "too_many_streams"
    """A new stream over ``max_streams``."""
    RETIRED_STREAM = "retired_stream"
    """A reliable data or resume frame for a stream id that already ended."""
    LOST_STREAM = "lost_stream"
    """A reliable frame acknowledging data on a stream this side does not have."""
    CONTROL_QUEUE_FULL = "control_queue_full"
    """A reply reset that did not fit ``max_pending_control_frames``."""


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Limits of one multiplexed socket."""

    max_streams: int = MAX_STREAMS
    max_retired_stream_ids: int = MAX_RETIRED_STREAM_IDS
    max_pending_control_frames: int = MAX_PENDING_CONTROL_FRAMES
    frame_limits: FrameLimits = INBOUND_LIMITS
    stream: ReliableStreamConfig = field(default_factory=ReliableStreamConfig)

    def __post_init__(self) -> None:
        if self.max_streams <= 0 or self.max_retired_stream_ids < 0:
            raise ValueError("max_streams must be positive and max_retired_stream_ids >= 0")
        if self.max_pending_control_frames < 0:
            raise ValueError("max_pending_control_frames must be >= 0")
