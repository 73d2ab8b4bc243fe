"""Sans-IO Noise multiplexer: encrypted relay streams over one socket, either side.

:class:`NoiseStreamMux` is a :class:`~exec_server.relay.stream_mux.StreamMux` whose
streams all start with the hybrid IK handshake (:mod:`~exec_server.relay.noise.handshake`)
and carry only ciphertext afterwards. It is driven exactly like the plain multiplexer
(``receive_bytes``, ``send_message``, ``data_to_send``, ``next_event``, timers); it
adds the handshake and Codex 0.171's admission rules in front of it.

**Which relay a stream gets (the negotiation).** Our initiator sets the reliable
capability flag (bit 0 of ``ack_bits``, as in the cleartext negotiation of
``docs/relay.md``) on its ``resume`` and ``handshake`` frames. Codex 0.171 ignores
``ack_bits`` on every frame (probed), so a Codex executor answers message 2 unflagged and
the stream becomes a :class:`~exec_server.relay.noise.codex_stream.CodexNoiseStream`:
exactly Codex's records (seq from 0, one record of at most 60 KiB per frame, no acks).
Our responder answers a flagged message 1 with a flagged message 2, and both ends then
run a :class:`~exec_server.relay.reliable_stream.ReliableStream` in ``RELIABLE`` mode
(acks, selective acks, retransmission, resume, segmentation, flow control) whose segment
payloads are Noise records: each segment is encrypted once, in seq order, with its
``segment_index``/``segment_count`` as associated data (so the unauthenticated frame
header cannot regroup segments into other messages); a retransmission resends the same
ciphertext, and segments are reordered by seq before they are decrypted. A Codex
harness never sets the flag, so it gets Codex's behaviour from our responder.

**Surviving loss during the handshake (our endpoints only).** Message 1 is never sent
twice to a peer that might be Codex: 0.171 resets a stream on a duplicate handshake. So
the initiator, while it has heard nothing, repeats only its flagged ``resume{0}`` (which
Codex ignores) on a backoff from :attr:`NoiseMuxConfig.probe_initial_s`. Our responder
answers a flagged ``resume{0}`` for a stream that has no message 2 yet with a flagged
``ack_frame`` (stateless: "I am ours, I have not answered you"; the claim sent with
message 1 usually gets one too), and with message 2 again once it has one. An initiator
that heard a flagged frame knows its peer is ours and resends message 1 with each later
probe; our responder ignores an exact copy of a flagged
message 1 (pending or answered) and resends message 2 for it. A harness key
authorization is single use at the registry, so the responder keeps a pending or
answered handshake across its own socket reconnects rather than validating again.

**Responder admission (Codex 0.171's rules).** Message 1 is read with the process key,
the prologue binding environment, registration and stream; the harness key it proves
and its authorization go to the owner as :class:`ValidationRequested` (the registry's
``/validate``); message 2 is sent only after :meth:`NoiseStreamMux.validation_result`
says yes, within :attr:`NoiseMuxConfig.validation_timeout_s`. At most
:attr:`NoiseMuxConfig.max_pending_validations` handshakes wait for the registry at once;
beyond them up to :attr:`NoiseMuxConfig.max_waiting_handshakes` messages 1 are held,
unread, for a free slot (0.171 resets them at once). Open, pending and held handshakes
together stay within ``MuxConfig.max_streams``; over any bound the handshake is reset. Every
failed handshake (unreadable message 1, refused or timed-out validation, a duplicate
message 1 that is not an exact flagged copy, data before the handshake) counts against
:attr:`NoiseMuxConfig.max_failed_handshakes` per socket; once the budget is spent,
new handshakes on that socket are refused for :attr:`NoiseMuxConfig.failure_cooldown_s`
(0.171 closes the socket instead, which would end every Codex stream on it; later Codex
pauses handshakes, as here). Established streams are never affected. Data for a stream
that has no completed handshake is answered with a reset, as 0.171 does. Resets for
Codex peers always say ``noise_relay_protocol_error``.

Events besides the plain multiplexer's: :class:`ValidationRequested` (responder),
:class:`HandshakeFailed` (either side). A stream whose handshake completes is announced
with :class:`~exec_server.relay.events.StreamOpened` on both sides; from then on it is an
ordinary stream of the multiplexer. Nothing here reads a clock or performs I/O.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

from exec_server.relay.events import MuxEvent, PeerMode
from exec_server.relay.frame_codec import (
    RELAY_MESSAGE_FRAME_VERSION,
    RELIABLE_CAPABILITY_BIT,
    DataBody,
    HandshakeBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    encode_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.noise.cipher import TAG_LEN, NoiseTransport
from exec_server.relay.noise.codex_stream import CodexNoiseStream
from exec_server.relay.noise.errors import NoiseError, NoiseProtocolError
from exec_server.relay.noise.handshake import (
    MAX_AUTHORIZATION_BYTES,
    InitiatorHandshake,
    PendingResponderHandshake,
    noise_prologue,
)
from exec_server.relay.noise.keys import SYSTEM_KEY_SOURCE, KeySource, NoiseIdentity, NoisePublicKey
from exec_server.relay.noise.stream import (
    HARNESS_KEY_VALIDATION_TIMEOUT_S,
    MAX_FAILED_HANDSHAKES,
    MAX_PENDING_VALIDATIONS,
    NOISE_RELAY_RESET_REASON,
    ValidationRequested,
)
from exec_server.relay.reliable_stream import ReliableStream
from exec_server.relay.stream_config import PeerProtocolViolation
from exec_server.relay.stream_mux import MuxConfig, MuxRole, MuxStream, StreamMux

__all__ = [
    "FAILURE_COOLDOWN_S",
    "HANDSHAKE_TIMEOUT_S",
    "MAX_WAITING_HANDSHAKES",
    "PROBE_INITIAL_S",
    "PROBE_MAX_S",
    "UNKNOWN_STREAM_REASON",
    "HandshakeFailed",
    "HandshakeOutcome",
    "NoiseBundle",
    "NoiseMuxConfig",
    "NoiseStreamMux",
    "ValidationRequested",
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


def _flagged(frame: RelayFrame) -> bool:
    return bool(frame.ack_bits & RELIABLE_CAPABILITY_BIT)


def _digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def _handshake_frame(stream_id: str, payload: bytes, *, flagged: bool) -> RelayFrame:
    flag = RELIABLE_CAPABILITY_BIT if flagged else 0
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, 0, flag, HandshakeBody(payload))


@dataclass(slots=True)
class _Pending:
    """Responder: message 1 read, waiting for the registry."""

    validation_id: int
    handshake: PendingResponderHandshake
    deadline: float
    reliable: bool
    digest: bytes


@dataclass(slots=True)
class _Waiting:
    """Responder: a message 1 not read yet (every validation slot was taken)."""

    message1: bytes
    flagged: bool
    deadline: float


@dataclass(slots=True)
class _Answered:
    """Responder: a reliable stream whose message 2 the initiator may not have yet."""

    digest: bytes
    message2: RelayFrame | None
    """Dropped once the initiator sent anything on the open stream."""


@dataclass(slots=True)
class _Initiating:
    """Initiator: message 1 sent, waiting for message 2."""

    handshake: InitiatorHandshake
    message1: RelayFrame
    deadline: float
    probe_at: float
    probe_wait_s: float
    offer_reliable: bool
    peer_is_ours: bool = False


class NoiseStreamMux(StreamMux):
    """A multiplexer of Noise streams (see the module docstring).

    Responder (``MuxRole.ENVIRONMENT``): ``identity`` is the process key registered as
    ``executor_registration_id`` of ``environment_id``; set the registration with
    :meth:`set_registration` before the first socket. Initiator (``MuxRole.HARNESS``):
    open streams with :meth:`open_noise_stream`; ``identity`` is unused.
    """

    def __init__(
        self,
        role: MuxRole,
        config: MuxConfig | None = None,
        *,
        noise: NoiseMuxConfig | None = None,
        identity: NoiseIdentity | None = None,
        environment_id: str | None = None,
        executor_registration_id: str | None = None,
        keys: KeySource = SYSTEM_KEY_SOURCE,
    ) -> None:
        super().__init__(role, config)
        if role is MuxRole.ENVIRONMENT and identity is None:
            raise ValueError("a Noise responder needs its identity")
        self.noise = noise or NoiseMuxConfig()
        self._identity = identity
        self._environment_id = environment_id
        self._registration_id = executor_registration_id
        self._keys = keys
        # The ephemeral ML-KEM key message 2 carries is never used (only hashed): one per
        # responder saves a key generation (about 0.27 ms) per handshake.
        self._unused_kem_public_key: bytes | None = None
        self._noise_out: deque[RelayFrame] = deque()
        self._noise_events: deque[NoiseMuxEvent] = deque()
        # responder
        self._pending: dict[str, _Pending] = {}
        self._waiting: dict[str, _Waiting] = {}  # in arrival order
        self._answered: dict[str, _Answered] = {}
        self._next_validation_id = 0
        self.failed_handshakes = 0
        """Failed handshakes on the current socket (reset when the socket changes)."""
        self._cooldown_until = -1.0
        self._connected = True
        # initiator
        self._initiating: dict[str, _Initiating] = {}
        self.handshakes: Counter[str] = Counter()
        """Handshake outcomes by :class:`HandshakeOutcome`."""

    def __repr__(self) -> str:
        return (
            f"NoiseStreamMux({self.role.value}, streams={len(self.streams)}, "
            f"pending={len(self._pending)}, waiting={len(self._waiting)}, "
            f"initiating={len(self._initiating)})"
        )

    # ------------------------------------------------------------------ state

    @property
    def _offers_reliable(self) -> bool:
        return self.noise.allow_reliable and self.config.stream.allow_reliable

    @property
    def pending_validations(self) -> int:
        return len(self._pending)

    @property
    def waiting_handshakes(self) -> int:
        """Messages 1 held until a validation slot frees."""
        return len(self._waiting)

    @property
    def handshaking(self) -> int:
        """Initiator: streams waiting for message 2."""
        return len(self._initiating)

    def set_registration(self, environment_id: str, executor_registration_id: str) -> None:
        """Responder: the registration new handshakes are bound to (its prologue).
        Handshakes already read keep the registration they were read under."""
        self._environment_id = environment_id
        self._registration_id = executor_registration_id

    # ------------------------------------------------------------------ streams

    def open_stream(self, now: float, stream_id: str | None = None) -> ReliableStream:
        raise TypeError("a Noise multiplexer opens streams with open_noise_stream")

    def open_noise_stream(
        self, stream_id: str, bundle: NoiseBundle, identity: NoiseIdentity, now: float
    ) -> None:
        """Initiator: start the handshake of a new stream; :class:`StreamOpened` follows
        when it completes, :class:`HandshakeFailed` when it does not.

        ``identity`` must be the key the bundle was issued for (sent to ``/connect``).
        Raises ``ValueError`` for an id in use and ``NoiseError`` for a bad bundle."""
        if self.role is not MuxRole.HARNESS:
            raise TypeError("only the harness side opens Noise streams")
        if stream_id in self.streams or stream_id in self._initiating:
            raise ValueError(f"relay stream id {stream_id!r} is in use on this socket")
        authorization = bundle.authorization.encode()
        if len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise NoiseProtocolError("harness key authorization is too long")
        prologue = noise_prologue(bundle.environment_id, bundle.executor_registration_id, stream_id)
        handshake, message1 = InitiatorHandshake.start(
            identity, bundle.executor_public_key, prologue, authorization, keys=self._keys
        )
        offer = self._offers_reliable
        frame = _handshake_frame(stream_id, message1, flagged=offer)
        wait = self.noise.probe_initial_s
        self._initiating[stream_id] = _Initiating(
            handshake, frame, now + self.noise.handshake_timeout_s, now + wait, wait, offer
        )
        flag = RELIABLE_CAPABILITY_BIT if offer else 0
        self._noise_out.append(resume_frame(stream_id, 0, ack_bits=flag))
        self._noise_out.append(frame)

    def _reliable_stream(
        self, stream_id: str, transport: NoiseTransport, *, initiator: bool, now: float
    ) -> ReliableStream:
        cfg = self.config.stream
        max_len = cfg.max_segment_payload_bytes + TAG_LEN

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
            config=cfg,
            seal=seal,
            unseal=unseal,
            peer_mode=PeerMode.RELIABLE,
        )

    def _open(self, stream: MuxStream, answered: _Answered | None) -> bool:
        """Adopt a stream whose handshake completed; false when the multiplexer has no
        room (streams that ended but still flush count too)."""
        try:
            self.adopt_stream(stream)
        except (ValueError, RuntimeError):
            return False
        self.handshakes[
            HandshakeOutcome.OPENED_RELIABLE if answered else HandshakeOutcome.OPENED_CODEX
        ] += 1
        if answered is not None:
            if len(self._answered) > 2 * len(self.streams) + 16:
                # Forget the handshakes of streams that ended (amortized: no per-stream hook).
                live = self.streams
                self._answered = {k: v for k, v in self._answered.items() if k in live}
            self._answered[stream.stream_id] = answered
        return True

    # ------------------------------------------------------------------ input

    def receive_frame(self, frame: RelayFrame, now: float) -> None:
        stream_id = frame.stream_id
        stream = self.streams.get(stream_id)
        if stream is not None:
            if self._on_open_stream(stream, frame):
                super().receive_frame(frame, now)
        elif self.role is MuxRole.ENVIRONMENT:
            self._responder_frame(frame, now)
        else:
            self._initiator_frame(frame, now)

    def _on_open_stream(self, stream: MuxStream, frame: RelayFrame) -> bool:
        """A frame for an established stream: handshake copies are handled here; whether
        the stream should see the frame."""
        body = frame.body
        stream_id = frame.stream_id
        if isinstance(body, HandshakeBody):
            if isinstance(stream, ReliableStream) and _flagged(frame):
                answered = self._answered.get(stream_id)
                if answered is not None and answered.digest == _digest(body.payload):
                    if answered.message2 is not None:
                        self._noise_out.append(answered.message2)
                    return False
                if self.role is MuxRole.HARNESS:
                    return False  # a copy of message 2
            # 0.171 resets a stream on a second handshake.
            self.handshakes[HandshakeOutcome.DUPLICATE] += 1
            self.reset_stream(stream_id, "duplicate Noise handshake")
            return False
        answered = self._answered.get(stream_id)
        if answered is not None and answered.message2 is not None and _flagged(frame):
            if isinstance(body, ResumeBody) and body.next_seq == 0 and frame.ack == 0:
                self._noise_out.append(answered.message2)  # the initiator's probe
            elif not isinstance(body, ResetBody):
                answered.message2 = None  # it has message 2: it is talking on the stream
        return True

    # --- responder --------------------------------------------------------------------

    def _responder_frame(self, frame: RelayFrame, now: float) -> None:
        stream_id = frame.stream_id
        body = frame.body
        flagged = _flagged(frame)
        if isinstance(body, HandshakeBody):
            self._on_message1(stream_id, body.payload, flagged, now)
        elif isinstance(body, DataBody):
            started = self._drop_started(stream_id)
            self._refuse(
                stream_id,
                now,
                flagged=flagged,
                outcome=HandshakeOutcome.DATA_BEFORE_HANDSHAKE,
                failed=started,
            )
            self._admit_waiting(now)
        elif isinstance(body, ResumeBody) and flagged and self._offers_reliable:
            if body.next_seq == 0 and frame.ack == 0:
                # An initiator's probe: tell it we are ours and have no message 2 for it.
                self._noise_out.append(
                    ack_frame(stream_id, ack=0, ack_bits=RELIABLE_CAPABILITY_BIT)
                )
            elif stream_id not in self._pending and stream_id not in self._waiting:
                # A reliable stream this side does not have (a restarted environment).
                self._noise_out.append(
                    reset_frame(stream_id, UNKNOWN_STREAM_REASON, ack_bits=RELIABLE_CAPABILITY_BIT)
                )
        elif isinstance(body, ResetBody) and self._drop_started(stream_id):
            self._noise_events.append(HandshakeFailed(stream_id, body.reason, remote=True))
            self.handshakes[HandshakeOutcome.RESET_BY_PEER] += 1
            self._admit_waiting(now)
        # ack_frame, heartbeat, an unflagged resume (Codex's claim): ignored as 0.171 does

    def _refuse(
        self,
        stream_id: str,
        now: float,
        *,
        flagged: bool,
        outcome: HandshakeOutcome,
        failed: bool,
    ) -> None:
        """Reset a stream whose handshake this side will not complete; a ``failed``
        handshake counts against the socket's budget. Codex peers get Codex's reason;
        ours are told what is wrong (cleartext data reaching an encrypted environment)."""
        self.handshakes[outcome] += 1
        flag = RELIABLE_CAPABILITY_BIT if flagged else 0
        reason = NOISE_RELAY_RESET_REASON
        if flagged and outcome is HandshakeOutcome.DATA_BEFORE_HANDSHAKE:
            reason = UNKNOWN_STREAM_REASON
        self._noise_out.append(reset_frame(stream_id, reason, ack_bits=flag))
        if failed:
            self._noise_events.append(HandshakeFailed(stream_id, outcome.value, remote=False))
            self.failed_handshakes += 1
            if self.failed_handshakes >= self.noise.max_failed_handshakes:
                self._cooldown_until = now + self.noise.failure_cooldown_s

    def _drop_started(self, stream_id: str) -> bool:
        """Forget a handshake being validated or waiting for a slot; whether there was one."""
        pending = self._pending.pop(stream_id, None)
        waiting = self._waiting.pop(stream_id, None)
        return pending is not None or waiting is not None

    def _holds_copy(self, stream_id: str, message1: bytes) -> bool:
        """Whether ``message1`` is an exact copy of a flagged message 1 already held."""
        pending = self._pending.get(stream_id)
        if pending is not None:
            return pending.reliable and pending.digest == _digest(message1)
        waiting = self._waiting.get(stream_id)
        return waiting is not None and waiting.flagged and waiting.message1 == message1

    def _on_message1(self, stream_id: str, message1: bytes, flagged: bool, now: float) -> None:
        reliable = flagged and self._offers_reliable
        if stream_id in self._pending or stream_id in self._waiting:
            if reliable and self._holds_copy(stream_id, message1):
                return  # a copy of a message 1 already held
            self._drop_started(stream_id)
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.DUPLICATE, failed=True
            )
            self._admit_waiting(now)
            return
        outcome = self._admission(now)
        if outcome is HandshakeOutcome.TOO_MANY_PENDING and (
            len(self._waiting) < self.noise.max_waiting_handshakes
        ):
            self._waiting[stream_id] = _Waiting(
                message1, flagged, now + self.noise.validation_timeout_s
            )
            return
        if outcome is not None:
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)
            return
        self._read_message1(stream_id, message1, flagged, now)

    def _admit_waiting(self, now: float) -> None:
        """Read held messages 1 while validation slots are free (oldest first)."""
        while self._waiting and len(self._pending) < self.noise.max_pending_validations:
            stream_id = next(iter(self._waiting))
            waiting = self._waiting.pop(stream_id)
            self._read_message1(stream_id, waiting.message1, waiting.flagged, now)

    def _read_message1(self, stream_id: str, message1: bytes, flagged: bool, now: float) -> None:
        reliable = flagged and self._offers_reliable
        if self._identity is None or self._registration_id is None or not self._environment_id:
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.REFUSED, failed=False
            )
            return
        prologue = noise_prologue(self._environment_id, self._registration_id, stream_id)
        try:
            handshake = PendingResponderHandshake.read_request(
                self._identity, prologue, message1, keys=self._keys
            )
            if len(handshake.payload) > MAX_AUTHORIZATION_BYTES:
                raise NoiseProtocolError("Noise relay handshake authorization is too long")
            authorization = handshake.payload.decode()
        except (NoiseError, UnicodeDecodeError):
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.BAD_MESSAGE, failed=True
            )
            return
        validation_id = self._next_validation_id
        self._next_validation_id += 1
        self._pending[stream_id] = _Pending(
            validation_id,
            handshake,
            now + self.noise.validation_timeout_s,
            reliable,
            _digest(message1),
        )
        self._noise_events.append(
            ValidationRequested(
                stream_id,
                validation_id,
                handshake.initiator_public_key,
                authorization,
                self._registration_id,
            )
        )

    def _admission(self, now: float) -> HandshakeOutcome | None:
        """Why a new handshake cannot start now (``None`` if it can)."""
        if now < self._cooldown_until:
            return HandshakeOutcome.COOLING_DOWN
        if self.failed_handshakes >= self.noise.max_failed_handshakes:
            self.failed_handshakes = 0  # the cooldown is over: a fresh budget
        if len(self._pending) >= self.noise.max_pending_validations:
            return HandshakeOutcome.TOO_MANY_PENDING
        if len(self.streams) + len(self._pending) + len(self._waiting) >= self.config.max_streams:
            return HandshakeOutcome.TOO_MANY_STREAMS
        return None

    def validation_result(
        self, stream_id: str, validation_id: int, valid: bool, now: float
    ) -> None:
        """The registry's answer to :class:`ValidationRequested` (``valid`` false for a
        refusal, an error or a timeout). A stale answer (the stream was reset, reused or
        timed out meanwhile) is ignored."""
        pending = self._pending.get(stream_id)
        if pending is None or pending.validation_id != validation_id:
            return
        del self._pending[stream_id]
        self._complete(stream_id, pending, valid, now)
        self._admit_waiting(now)

    def _complete(self, stream_id: str, pending: _Pending, valid: bool, now: float) -> None:
        flagged = pending.reliable
        if not valid:
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.REFUSED, failed=True
            )
            return
        if len(self.streams) >= self.config.max_streams:
            outcome = HandshakeOutcome.TOO_MANY_STREAMS
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)
            return
        if self._unused_kem_public_key is None:
            private = self._keys.mlkem768_private_key()
            self._unused_kem_public_key = private.public_key().public_bytes_raw()
        try:
            transport, message2 = pending.handshake.complete(
                unused_kem_public_key=self._unused_kem_public_key
            )
        except NoiseError:
            outcome = HandshakeOutcome.BAD_MESSAGE
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=True)
            return
        frame = _handshake_frame(stream_id, message2, flagged=flagged)
        stream: MuxStream
        if pending.reliable:
            stream = self._reliable_stream(stream_id, transport, initiator=False, now=now)
            opened = self._open(stream, _Answered(pending.digest, frame))
        else:
            stream = CodexNoiseStream(stream_id, transport, config=self.config.stream)
            opened = self._open(stream, None)
        if opened:
            self._noise_out.append(frame)
        else:
            outcome = HandshakeOutcome.TOO_MANY_STREAMS
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)

    # --- initiator --------------------------------------------------------------------

    def _initiator_frame(self, frame: RelayFrame, now: float) -> None:
        stream_id = frame.stream_id
        state = self._initiating.get(stream_id)
        if state is None:
            return
        body = frame.body
        flagged = _flagged(frame)
        if isinstance(body, ResetBody):
            self._fail(stream_id, HandshakeOutcome.RESET_BY_PEER, body.reason, remote=True)
        elif isinstance(body, HandshakeBody):
            self._on_message2(stream_id, state, body.payload, flagged, now)
        elif flagged and state.offer_reliable:
            # Our responder answered the claim or a probe: from the next probe on, message
            # 1 is resent with it (not at once: it usually answers the claim that went
            # out with message 1, and message 2 is then on its way).
            state.peer_is_ours = True

    def _on_message2(
        self, stream_id: str, state: _Initiating, message2: bytes, flagged: bool, now: float
    ) -> None:
        reliable = flagged and state.offer_reliable
        if state.peer_is_ours and not reliable:
            why = "the responder answered a reliable probe, then like Codex"
            self._fail(stream_id, HandshakeOutcome.CONFLICT, why, remote=False, send_reset=True)
            return
        try:
            transport = state.handshake.finish(message2)
        except NoiseError as exc:
            outcome = HandshakeOutcome.BAD_MESSAGE
            self._fail(stream_id, outcome, str(exc), remote=False, send_reset=True)
            return
        stream: MuxStream
        if reliable:
            stream = self._reliable_stream(stream_id, transport, initiator=True, now=now)
            # Copies of message 2 may follow (our responder answers copies of message 1).
            opened = self._open(stream, _Answered(_digest(message2), None))
        else:
            stream = CodexNoiseStream(stream_id, transport, config=self.config.stream)
            opened = self._open(stream, None)
        if opened:
            del self._initiating[stream_id]
        else:
            why = "too many relay streams on this socket"
            self._fail(
                stream_id, HandshakeOutcome.TOO_MANY_STREAMS, why, remote=False, send_reset=True
            )

    def _fail(
        self,
        stream_id: str,
        outcome: HandshakeOutcome,
        reason: str,
        *,
        remote: bool,
        send_reset: bool = False,
    ) -> None:
        state = self._initiating.pop(stream_id, None)
        if state is None:
            return
        self.handshakes[outcome] += 1
        if send_reset:
            flag = RELIABLE_CAPABILITY_BIT if state.offer_reliable else 0
            self._noise_out.append(reset_frame(stream_id, NOISE_RELAY_RESET_REASON, ack_bits=flag))
        self._noise_events.append(HandshakeFailed(stream_id, reason, remote))

    def cancel_noise_stream(self, stream_id: str, reason: str) -> None:
        """Initiator: give up a handshake in progress (the peer gets a reset)."""
        outcome = HandshakeOutcome.CONNECTION_LOST
        self._fail(stream_id, outcome, reason, remote=False, send_reset=True)

    # ------------------------------------------------------------------ output, events

    def has_output(self) -> bool:
        return bool(self._noise_out) or super().has_output()

    def data_to_send(
        self, now: float, max_bytes: int | None = None, *, headroom: int = 0
    ) -> list[bytes | bytearray]:
        frames: list[bytes | bytearray] = []
        noise_out = self._noise_out
        while noise_out and self._connected:
            frames.append(encode_frame(noise_out.popleft()))
        return frames + super().data_to_send(now, max_bytes, headroom=headroom)

    def next_event(self) -> NoiseMuxEvent | None:  # type: ignore[override]
        if self._noise_events:
            return self._noise_events.popleft()
        return super().next_event()

    # ------------------------------------------------------------------ timers, socket

    def get_timer(self) -> float | None:
        deadline = super().get_timer()
        for pending in self._pending.values():
            if deadline is None or pending.deadline < deadline:
                deadline = pending.deadline
        if self._waiting:  # in arrival order: the first waits longest
            first = next(iter(self._waiting.values())).deadline
            if deadline is None or first < deadline:
                deadline = first
        for state in self._initiating.values():
            soonest = min(state.deadline, state.probe_at)
            if deadline is None or soonest < deadline:
                deadline = soonest
        return deadline

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        for stream_id, pending in list(self._pending.items()):
            if now >= pending.deadline:
                self.validation_result(stream_id, pending.validation_id, False, now)
        for stream_id, waiting in list(self._waiting.items()):
            if now < waiting.deadline:
                break
            del self._waiting[stream_id]
            outcome = HandshakeOutcome.TOO_MANY_PENDING
            self._refuse(stream_id, now, flagged=waiting.flagged, outcome=outcome, failed=False)
        for stream_id, state in list(self._initiating.items()):
            if now >= state.deadline:
                why = "no Noise handshake answer in time"
                self._fail(
                    stream_id, HandshakeOutcome.TIMED_OUT, why, remote=False, send_reset=True
                )
            elif now >= state.probe_at and self._connected:
                self._probe(stream_id, state, now)

    def _probe(self, stream_id: str, state: _Initiating, now: float) -> None:
        if state.offer_reliable:
            self._noise_out.append(resume_frame(stream_id, 0, ack_bits=RELIABLE_CAPABILITY_BIT))
            if state.peer_is_ours:
                self._noise_out.append(state.message1)
        state.probe_at = now + state.probe_wait_s
        state.probe_wait_s = min(state.probe_wait_s * 2, self.noise.probe_max_s)

    def connection_lost(self, now: float) -> None:
        """The socket closed. Established streams behave as in the plain multiplexer
        (reliable ones wait, Codex ones end). An initiator's handshake survives only if
        its peer is known to be ours (it resumes on the next socket); a responder keeps
        its handshakes (the registry consumed their authorizations)."""
        self._connected = False
        self._noise_out.clear()
        for stream_id, state in list(self._initiating.items()):
            if not state.peer_is_ours:
                why = "the relay socket closed during the Noise handshake"
                self._fail(stream_id, HandshakeOutcome.CONNECTION_LOST, why, remote=False)
        super().connection_lost(now)

    def on_reconnect(self, now: float) -> None:
        self._connected = True
        self.failed_handshakes = 0
        self._cooldown_until = -1.0
        for stream_id, state in self._initiating.items():
            self._noise_out.append(resume_frame(stream_id, 0, ack_bits=RELIABLE_CAPABILITY_BIT))
            self._noise_out.append(state.message1)
            state.probe_at = now + self.noise.probe_initial_s
            state.probe_wait_s = self.noise.probe_initial_s
        super().on_reconnect(now)
