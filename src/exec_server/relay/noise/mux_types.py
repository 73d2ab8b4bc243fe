"""The Noise multiplexer's vocabulary: its bounds, its events and outcomes, the bundle an
initiator opens a stream with, and the records it keeps per handshake.

Shared by :mod:`~exec_server.relay.noise.noise_mux` (the multiplexer, the initiator's
side) and :mod:`~exec_server.relay.noise.admission` (the responder's side); every public
name is re-exported by ``noise_mux``. Nothing here reads a clock or performs I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from exec_server.relay.events import MuxEvent, PeerMode
from exec_server.relay.frame_codec import (
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    HandshakeBody,
    RelayFrame,
)
from exec_server.relay.noise.cipher import TAG_LEN, NoiseTransport
from exec_server.relay.noise.errors import NoiseError
from exec_server.relay.noise.handshake import InitiatorHandshake, PendingResponderHandshake
from exec_server.relay.noise.keys import NoisePublicKey
from exec_server.relay.noise.stream import (
    HARNESS_KEY_VALIDATION_TIMEOUT_S,
    MAX_FAILED_HANDSHAKES,
    MAX_PENDING_VALIDATIONS,
    ValidationRequested,
)
from exec_server.relay.reliable_stream import ReliableStream
from exec_server.relay.stream_config import PeerProtocolViolation, ReliableStreamConfig

__all__ = [
    "FAILURE_COOLDOWN_S",
    "HANDSHAKE_TIMEOUT_S",
    "MAX_WAITING_HANDSHAKES",
    "PROBE_INITIAL_S",
    "PROBE_MAX_S",
    "UNKNOWN_STREAM_REASON",
    "AnsweredHandshake",
    "ClaimAnswer",
    "HandshakeFailed",
    "HandshakeOutcome",
    "InitiatingHandshake",
    "NoiseBundle",
    "NoiseMuxConfig",
    "NoiseMuxEvent",
    "PendingHandshake",
    "WaitingHandshake",
    "handshake_frame",
    "is_flagged",
    "message_digest",
    "reliable_noise_stream",
    "segment_ad",
]

HANDSHAKE_TIMEOUT_S = 20.0
"""How long an initiator waits for message 2 (0.171's executor may take the registry's
10 s validation timeout first)."""
PROBE_INITIAL_S = 0.5
"""First wait before an initiator repeats its flagged ``resume{0}`` (and, once it knows
the peer is ours, message 1)."""
PROBE_MAX_S = 4.0
"""Longest wait between two probes."""
FAILURE_COOLDOWN_S = 10.0
"""How long a responder socket refuses new handshakes once its failure budget is spent."""
MAX_WAITING_HANDSHAKES = 512
"""Messages 1 a responder socket holds while its validation slots are all taken."""
UNKNOWN_STREAM_REASON = (
    "unknown_stream: no encrypted stream with this id; this environment accepts only "
    "end-to-end encrypted (Noise) streams"
)
"""Our reset for our own peers' frames on a stream without a handshake: a cleartext
harness that reached an encrypted environment, or a stream the environment lost."""


@dataclass(frozen=True, slots=True)
class NoiseMuxConfig:
    """The handshake bounds of one Noise socket (stream limits are ``MuxConfig``'s)."""

    max_pending_validations: int = MAX_PENDING_VALIDATIONS
    max_waiting_handshakes: int = MAX_WAITING_HANDSHAKES
    """Messages 1 held, unread, while every validation slot is taken (a burst of
    harnesses); beyond them a handshake is reset, as 0.171 resets at 32."""
    max_failed_handshakes: int = MAX_FAILED_HANDSHAKES
    failure_cooldown_s: float = FAILURE_COOLDOWN_S
    validation_timeout_s: float = HARNESS_KEY_VALIDATION_TIMEOUT_S
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    probe_initial_s: float = PROBE_INITIAL_S
    probe_max_s: float = PROBE_MAX_S
    allow_reliable: bool = True
    """Offer (initiator) and accept (responder) the reliable relay; off, every stream
    behaves as 0.171 does."""

    def __post_init__(self) -> None:
        if self.max_pending_validations <= 0 or self.max_failed_handshakes <= 0:
            raise ValueError("max_pending_validations and max_failed_handshakes must be positive")
        if self.max_waiting_handshakes < 0:
            raise ValueError("max_waiting_handshakes must be >= 0")
        if min(self.validation_timeout_s, self.handshake_timeout_s, self.probe_initial_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.probe_max_s < self.probe_initial_s or self.failure_cooldown_s < 0:
            raise ValueError("need probe_max_s >= probe_initial_s and failure_cooldown_s >= 0")


@dataclass(frozen=True, slots=True)
class NoiseBundle:
    """What an initiator needs to open a stream (the registry's ``/connect`` answer)."""

    environment_id: str
    executor_registration_id: str
    executor_public_key: NoisePublicKey
    authorization: str = field(repr=False)


class HandshakeOutcome(StrEnum):
    """Counters of :attr:`NoiseStreamMux.handshakes` (stable metric labels)."""

    OPENED_RELIABLE = "opened_reliable"
    OPENED_CODEX = "opened_codex"
    BAD_MESSAGE = "bad_message"
    REFUSED = "refused"
    """The registry said no, or did not answer in time."""
    TOO_MANY_PENDING = "too_many_pending"
    TOO_MANY_STREAMS = "too_many_streams"
    COOLING_DOWN = "cooling_down"
    DUPLICATE = "duplicate"
    """A second, different message 1 for a stream (or an exact copy from a Codex peer)."""
    DATA_BEFORE_HANDSHAKE = "data_before_handshake"
    TIMED_OUT = "timed_out"
    """Initiator: no message 2 in time."""
    RESET_BY_PEER = "reset_by_peer"
    CONNECTION_LOST = "connection_lost"
    CONFLICT = "conflict"
    """Initiator: a peer that said it was ours answered like Codex."""


class HandshakeFailed:
    """A handshake this side started (initiator) or read (responder) did not complete.
    ``remote`` is true when the peer reset it; ``reason`` is safe to log."""

    __slots__ = ("reason", "remote", "stream_id")

    def __init__(self, stream_id: str, reason: str, remote: bool) -> None:
        self.stream_id = stream_id
        self.reason = reason
        self.remote = remote

    def __repr__(self) -> str:
        return f"HandshakeFailed({self.stream_id!r}, {self.reason!r}, remote={self.remote})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HandshakeFailed) and (
            (self.stream_id, self.reason, self.remote)
            == (other.stream_id, other.reason, other.remote)
        )

    __hash__ = None  # type: ignore[assignment]


NoiseMuxEvent = MuxEvent | ValidationRequested | HandshakeFailed


def segment_ad(index: int, count: int) -> bytes:
    """The associated data of a reliable stream's segment record: its place in its
    message, ``BE32(segment_index) || BE32(segment_count)``."""
    return index.to_bytes(4, "big") + count.to_bytes(4, "big")


def reliable_noise_stream(
    stream_id: str,
    transport: NoiseTransport,
    config: ReliableStreamConfig,
    initiator: bool,
    now: float,
) -> ReliableStream:
    """A :class:`ReliableStream` whose segment payloads are ``transport``'s records, each
    sealed once with its place in its message as associated data (:func:`segment_ad`)."""
    max_len = config.max_segment_payload_bytes + TAG_LEN

    def seal(payload: bytes, index: int, count: int) -> bytes:
        return transport.encrypt(payload, segment_ad(index, count), max_len=max_len)

    def unseal(record: bytes, index: int, count: int) -> bytes:
        try:
            return transport.decrypt(record, segment_ad(index, count), max_len=max_len)
        except NoiseError:
            raise PeerProtocolViolation("protocol_error:noise_record_rejected") from None

    return ReliableStream(
        stream_id,
        initiator=initiator,
        now=now,
        config=config,
        seal=seal,
        unseal=unseal,
        peer_mode=PeerMode.RELIABLE,
    )


def is_flagged(frame: RelayFrame) -> bool:
    return bool(frame.ack_bits & RELIABLE_CAPABILITY_BIT)


def message_digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def handshake_frame(stream_id: str, payload: bytes, *, flagged: bool) -> RelayFrame:
    flag = RELIABLE_CAPABILITY_BIT if flagged else 0
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, 0, flag, HandshakeBody(payload))


@dataclass(slots=True)
class PendingHandshake:
    """Responder: message 1 read, waiting for the registry."""

    validation_id: int
    handshake: PendingResponderHandshake
    deadline: float
    reliable: bool
    digest: bytes
    answer: tuple[NoiseTransport, bytes] | None = None
    """Message 2 and the transport, prepared while the registry is asked
    (:meth:`ResponderHandshakes.prepare_answer`); sent only once the key is valid."""
    unanswerable: bool = False
    """Preparing message 2 failed (a bad ephemeral key in message 1): refused once the
    registry answered."""


@dataclass(frozen=True, slots=True)
class ClaimAnswer:
    """Responder: the answer to an initiator's opening claim (a flagged ``resume{0}``:
    "ours, no message 2 yet"), decided when output is taken. The claim travels with
    message 1; if that arrived too (it usually does), the answer is left out: it would only
    wake the initiator, and the rendezvous, for nothing. Later probes are answered as
    they come (the initiator then knows its peer is ours: a socket loss during a slow
    validation resumes the handshake instead of failing it)."""

    stream_id: str


@dataclass(slots=True)
class WaitingHandshake:
    """Responder: a message 1 not read yet (every validation slot was taken)."""

    message1: bytes
    flagged: bool
    deadline: float


@dataclass(slots=True)
class AnsweredHandshake:
    """Responder: a reliable stream whose message 2 the initiator may not have yet."""

    digest: bytes
    message2: RelayFrame | None
    """Dropped once the initiator sent anything on the open stream."""


@dataclass(slots=True)
class InitiatingHandshake:
    """Initiator: message 1 sent, waiting for message 2."""

    handshake: InitiatorHandshake
    message1: RelayFrame
    deadline: float
    probe_at: float
    probe_wait_s: float
    offer_reliable: bool
    peer_is_ours: bool = False
