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
``ack_frame`` (stateless: "I am ours, I have not answered you"; the opening claim only
when message 1 did not arrive with it), and with message 2 again once it has one. An initiator
that heard a flagged frame knows its peer is ours and resends message 1 with each later
probe; our responder ignores an exact copy of a flagged
message 1 (pending or answered) and resends message 2 for it. A harness key
authorization is single use at the registry, so the responder keeps a pending or
answered handshake across its own socket reconnects rather than validating again.

Events besides the plain multiplexer's: :class:`ValidationRequested` (responder),
:class:`HandshakeFailed` (either side). A stream whose handshake completes is announced
with :class:`~exec_server.relay.events.StreamOpened` on both sides; from then on it is an
ordinary stream of the multiplexer. The responder's side (Codex 0.171's admission rules,
validation, message 2) is :mod:`~exec_server.relay.noise.admission`; the shared
vocabulary, :mod:`~exec_server.relay.noise.mux_types`. Nothing here reads a clock or
performs I/O.
"""

from __future__ import annotations

from collections import Counter, deque

from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    HandshakeBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    encode_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.noise.admission import ResponderHandshakes
from exec_server.relay.noise.cipher import NoiseTransport
from exec_server.relay.noise.codex_stream import CodexNoiseStream
from exec_server.relay.noise.errors import NoiseError, NoiseProtocolError
from exec_server.relay.noise.handshake import (
    MAX_AUTHORIZATION_BYTES,
    InitiatorEphemeral,
    InitiatorHandshake,
    noise_prologue,
)
from exec_server.relay.noise.keys import SYSTEM_KEY_SOURCE, KeySource, NoiseIdentity
from exec_server.relay.noise.mux_types import (
    FAILURE_COOLDOWN_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_WAITING_HANDSHAKES,
    PROBE_INITIAL_S,
    PROBE_MAX_S,
    UNKNOWN_STREAM_REASON,
    AnsweredHandshake,
    ClaimAnswer,
    HandshakeFailed,
    HandshakeOutcome,
    InitiatingHandshake,
    NoiseBundle,
    NoiseMuxConfig,
    NoiseMuxEvent,
    handshake_frame,
    is_flagged,
    message_digest,
    reliable_noise_stream,
    segment_ad,
)
from exec_server.relay.noise.stream import NOISE_RELAY_RESET_REASON, ValidationRequested
from exec_server.relay.reliable_stream import ReliableStream
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
    "NoiseMuxEvent",
    "NoiseStreamMux",
    "ValidationRequested",
    "segment_ad",
]


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
        self.noise = noise or NoiseMuxConfig()
        self._keys = keys
        self._noise_out: deque[RelayFrame | ClaimAnswer] = deque()
        self._noise_events: deque[NoiseMuxEvent] = deque()
        self._responder: ResponderHandshakes | None = None
        if role is MuxRole.ENVIRONMENT:
            if identity is None:
                raise ValueError("a Noise responder needs its identity")
            self._responder = ResponderHandshakes(
                self, identity, keys, environment_id, executor_registration_id
            )
        # responder: reliable streams whose message 2 the initiator may not have yet
        self._answered: dict[str, AnsweredHandshake] = {}
        self._connected = True
        # initiator
        self._initiating: dict[str, InitiatingHandshake] = {}
        self.handshakes: Counter[str] = Counter()
        """Handshake outcomes by :class:`HandshakeOutcome`."""

    def __repr__(self) -> str:
        return (
            f"NoiseStreamMux({self.role.value}, streams={len(self.streams)}, "
            f"pending={self.pending_validations}, waiting={self.waiting_handshakes}, "
            f"initiating={len(self._initiating)})"
        )

    # ------------------------------------------------------------------ state

    @property
    def offers_reliable(self) -> bool:
        """Whether this side offers (initiator) or accepts (responder) the reliable relay."""
        return self.noise.allow_reliable and self.config.stream.allow_reliable

    @property
    def pending_validations(self) -> int:
        return len(self._responder.pending) if self._responder is not None else 0

    @property
    def waiting_handshakes(self) -> int:
        """Messages 1 held until a validation slot frees."""
        return len(self._responder.waiting) if self._responder is not None else 0

    @property
    def failed_handshakes(self) -> int:
        """Responder: failed handshakes on the current socket (reset when it changes)."""
        return self._responder.failed_handshakes if self._responder is not None else 0

    @property
    def handshaking(self) -> int:
        """Initiator: streams waiting for message 2."""
        return len(self._initiating)

    def _responder_side(self) -> ResponderHandshakes:
        if self._responder is None:
            raise TypeError("only the environment side answers Noise handshakes")
        return self._responder

    def set_registration(self, environment_id: str, executor_registration_id: str) -> None:
        """Responder: the registration new handshakes are bound to (its prologue).
        Handshakes already read keep the registration they were read under."""
        side = self._responder_side()
        side.environment_id, side.registration_id = environment_id, executor_registration_id

    def validation_result(
        self, stream_id: str, validation_id: int, valid: bool, now: float
    ) -> None:
        """Responder: the registry's answer to :class:`ValidationRequested` (``valid``
        false for a refusal, an error or a timeout); message 2 goes out only on a yes. A
        stale answer (the stream was reset, reused or timed out meanwhile) is ignored."""
        self._responder_side().validation_result(stream_id, validation_id, valid, now)

    def prepare_answer(self, stream_id: str, validation_id: int) -> None:
        """Responder: compute message 2 while the registry is asked; it is sent only if
        :meth:`validation_result` says yes. Stale ids are ignored."""
        self._responder_side().prepare_answer(stream_id, validation_id)

    def queue_noise_frame(self, frame: RelayFrame | ClaimAnswer) -> None:
        self._noise_out.append(frame)  # for ResponderHandshakes

    def queue_noise_event(self, event: NoiseMuxEvent) -> None:
        self._noise_events.append(event)  # for ResponderHandshakes

    # ------------------------------------------------------------------ streams

    def open_stream(self, now: float, stream_id: str | None = None) -> ReliableStream:
        raise TypeError("a Noise multiplexer opens streams with open_noise_stream")

    def open_noise_stream(
        self,
        stream_id: str,
        bundle: NoiseBundle,
        identity: NoiseIdentity,
        now: float,
        *,
        ephemeral: InitiatorEphemeral | None = None,
    ) -> None:
        """Initiator: start the handshake of a new stream; :class:`StreamOpened` follows
        when it completes, :class:`HandshakeFailed` when it does not.

        ``identity`` must be the key the bundle was issued for (sent to ``/connect``);
        ``ephemeral``, key pairs generated ahead for this handshake (used once). Raises
        ``ValueError`` for an id in use and ``NoiseError`` for a bad bundle."""
        if self.role is not MuxRole.HARNESS:
            raise TypeError("only the harness side opens Noise streams")
        if stream_id in self.streams or stream_id in self._initiating:
            raise ValueError(f"relay stream id {stream_id!r} is in use on this socket")
        authorization = bundle.authorization.encode()
        if len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise NoiseProtocolError("harness key authorization is too long")
        prologue = noise_prologue(bundle.environment_id, bundle.executor_registration_id, stream_id)
        handshake, message1 = InitiatorHandshake.start(
            identity,
            bundle.executor_public_key,
            prologue,
            authorization,
            keys=self._keys,
            ephemeral=ephemeral,
        )
        offer = self.offers_reliable
        frame = handshake_frame(stream_id, message1, flagged=offer)
        wait = self.noise.probe_initial_s
        self._initiating[stream_id] = InitiatingHandshake(
            handshake, frame, now + self.noise.handshake_timeout_s, now + wait, wait, offer
        )
        flag = RELIABLE_CAPABILITY_BIT if offer else 0
        self._noise_out.append(resume_frame(stream_id, 0, ack_bits=flag))
        self._noise_out.append(frame)

    def reliable_stream(
        self, stream_id: str, transport: NoiseTransport, *, initiator: bool, now: float
    ) -> ReliableStream:
        """Our reliable relay over ``transport``'s records (see the module docstring)."""
        return reliable_noise_stream(stream_id, transport, self.config.stream, initiator, now)

    def open_handshaken(self, stream: MuxStream, answered: AnsweredHandshake | None) -> bool:
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
        elif self._responder is not None:
            self._responder.on_frame(frame, now)
        else:
            self._initiator_frame(frame, now)

    def _on_open_stream(self, stream: MuxStream, frame: RelayFrame) -> bool:
        """A frame for an established stream: handshake copies are handled here; whether
        the stream should see the frame."""
        body = frame.body
        if isinstance(body, HandshakeBody):
            self._handshake_on_open_stream(stream, frame, body.payload)
            return False
        answered = self._answered.get(frame.stream_id)
        if answered is not None and answered.message2 is not None and is_flagged(frame):
            if isinstance(body, ResumeBody) and body.next_seq == 0 and frame.ack == 0:
                self._noise_out.append(answered.message2)  # the initiator's probe
            elif not isinstance(body, ResetBody):
                answered.message2 = None  # it has message 2: it is talking on the stream
        return True

    def _handshake_on_open_stream(
        self, stream: MuxStream, frame: RelayFrame, payload: bytes
    ) -> None:
        """A handshake message for an established stream: a copy of ours (resend message 2
        for a copy of message 1, ignore a copy of message 2), else a duplicate (reset)."""
        stream_id = frame.stream_id
        if isinstance(stream, ReliableStream) and is_flagged(frame):
            answered = self._answered.get(stream_id)
            if answered is not None and answered.digest == message_digest(payload):
                if answered.message2 is not None:
                    self._noise_out.append(answered.message2)
                return
            if self.role is MuxRole.HARNESS:
                return  # a copy of message 2
        # 0.171 resets a stream on a second handshake.
        self.handshakes[HandshakeOutcome.DUPLICATE] += 1
        self.reset_stream(stream_id, "duplicate Noise handshake")

    # --- initiator --------------------------------------------------------------------

    def _initiator_frame(self, frame: RelayFrame, now: float) -> None:
        stream_id = frame.stream_id
        state = self._initiating.get(stream_id)
        if state is None:
            return
        body = frame.body
        flagged = is_flagged(frame)
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
        self, stream_id: str, state: InitiatingHandshake, message2: bytes, flagged: bool, now: float
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
            stream = self.reliable_stream(stream_id, transport, initiator=True, now=now)
            # Copies of message 2 may follow (our responder answers copies of message 1).
            opened = self.open_handshaken(stream, AnsweredHandshake(message_digest(message2), None))
        else:
            stream = CodexNoiseStream(stream_id, transport, config=self.config.stream)
            opened = self.open_handshaken(stream, None)
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
            item = noise_out.popleft()
            if isinstance(item, ClaimAnswer):
                if self._claim_answer_needed(item.stream_id):
                    frames.append(
                        encode_frame(
                            ack_frame(item.stream_id, ack=0, ack_bits=RELIABLE_CAPABILITY_BIT)
                        )
                    )
                continue
            frames.append(encode_frame(item))
        return frames + super().data_to_send(now, max_bytes, headroom=headroom)

    def _claim_answer_needed(self, stream_id: str) -> bool:
        """An opening claim is answered "ours, no message 2 yet" unless its message 1 is
        held by now (it came with the claim) or the stream opened since (message 2
        answers it)."""
        responder = self._responder
        if responder is not None and responder.holds(stream_id):
            return False
        return stream_id not in self.streams

    def next_event(self) -> NoiseMuxEvent | None:  # type: ignore[override]
        if self._noise_events:
            return self._noise_events.popleft()
        return super().next_event()

    # ------------------------------------------------------------------ timers, socket

    def get_timer(self) -> float | None:
        deadline = super().get_timer()
        if self._responder is not None:
            soonest = self._responder.deadline()
            if soonest is not None and (deadline is None or soonest < deadline):
                deadline = soonest
        for state in self._initiating.values():
            soonest = min(state.deadline, state.probe_at)
            if deadline is None or soonest < deadline:
                deadline = soonest
        return deadline

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        if self._responder is not None:
            self._responder.handle_timer(now)
        for stream_id, state in list(self._initiating.items()):
            if now >= state.deadline:
                why = "no Noise handshake answer in time"
                self._fail(
                    stream_id, HandshakeOutcome.TIMED_OUT, why, remote=False, send_reset=True
                )
            elif now >= state.probe_at and self._connected:
                self._probe(stream_id, state, now)

    def _probe(self, stream_id: str, state: InitiatingHandshake, now: float) -> None:
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
        if self._responder is not None:
            self._responder.on_reconnect()
        for stream_id, state in self._initiating.items():
            self._noise_out.append(resume_frame(stream_id, 0, ack_bits=RELIABLE_CAPABILITY_BIT))
            self._noise_out.append(state.message1)
            state.probe_at = now + self.noise.probe_initial_s
            state.probe_wait_s = self.noise.probe_initial_s
        super().on_reconnect(now)
