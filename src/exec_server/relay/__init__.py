"""Sans-IO relay: frame codec, reliable streams and the per-socket stream multiplexer.

Layout (each module's docstring states its limits and failure modes):

* :mod:`~exec_server.relay.frames`: the frame model (``RelayFrame``), builders, validation;
* :mod:`~exec_server.relay.frame_codec`: the ``RelayMessageFrame`` wire codec (hand-written
  proto3; the official runtime is the fallback and the oracle);
* :mod:`~exec_server.relay.send_window` and :mod:`~exec_server.relay.receive_window`: the
  two halves of a reliable stream (segmentation, window, retransmission; reorder,
  reassembly, acks), configured by :mod:`~exec_server.relay.stream_config`;
* :mod:`~exec_server.relay.reliable_stream`: one virtual stream: negotiation with the
  rules of :mod:`~exec_server.relay.peer_rules`, heartbeats, resets, resume;
* :mod:`~exec_server.relay.stream_mux`: many streams over one socket;
* :mod:`~exec_server.relay.control`: the rendezvous's control messages;
* :mod:`~exec_server.relay.noise`: Codex's Noise handshake and encrypted streams;
* :mod:`~exec_server.relay.events` and :mod:`~exec_server.relay.errors`.

``docs/relay.md`` describes the protocol.

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
from exec_server.relay.reliable_stream import ReliableStream
from exec_server.relay.stream_config import ReliableStreamConfig, StreamStats
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
