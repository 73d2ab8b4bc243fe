"""Sans-IO relay: frame codec, reliable streams and the per-socket stream multiplexer.

Layout (each module's docstring states its limits and failure modes):

* :mod:`~exec_server.relay.frame_codec`: the frame model (``RelayFrame``) and the
  ``RelayMessageFrame`` wire codec (hand-written proto3; the official runtime is the fallback);
* :mod:`~exec_server.relay.reliable_stream`: one virtual stream with acks, retransmission,
  segmentation, resume, heartbeats, and Codex-legacy negotiation;
* :mod:`~exec_server.relay.stream_mux`: many streams over one socket;
* :mod:`~exec_server.relay.events` and :mod:`~exec_server.relay.errors`.

Nothing here performs I/O or reads a clock: callers pass ``now`` (seconds) to every call.
"""

from exec_server.relay.errors import (
    InvalidFrame,
    InvalidFrameReason,
    MessageTooLarge,
    RelayError,
    SendBlocked,
    StreamClosed,
)
from exec_server.relay.events import (
    MessageReceived,
    MuxEvent,
    PeerMode,
    PeerModeResolved,
    PeerResumed,
    StreamEvent,
    StreamOpened,
    StreamReset,
)
from exec_server.relay.frame_codec import FrameLimits, decode_frame, encode_frame, validate_frame
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig, StreamStats
from exec_server.relay.stream_mux import MuxConfig, MuxRole, StreamMux

__all__ = [
    "FrameLimits",
    "InvalidFrame",
    "InvalidFrameReason",
    "MessageReceived",
    "MessageTooLarge",
    "MuxConfig",
    "MuxEvent",
    "MuxRole",
    "PeerMode",
    "PeerModeResolved",
    "PeerResumed",
    "RelayError",
    "ReliableStream",
    "ReliableStreamConfig",
    "SendBlocked",
    "StreamClosed",
    "StreamEvent",
    "StreamMux",
    "StreamOpened",
    "StreamReset",
    "StreamStats",
    "decode_frame",
    "encode_frame",
    "validate_frame",
]
