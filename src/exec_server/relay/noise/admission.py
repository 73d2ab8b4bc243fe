"""The responder's side of the Noise multiplexer: reading messages 1, asking the registry,
answering with message 2, and Codex 0.171's admission bounds.

:class:`ResponderHandshakes` belongs to one
:class:`~exec_server.relay.noise.noise_mux.NoiseStreamMux` in the environment role,
which hands it every frame for a stream that has no completed handshake
(:meth:`ResponderHandshakes.on_frame`) and its timers; streams whose handshake completes
are adopted by the multiplexer.

**Admission (Codex 0.171's rules).** Message 1 is read with the process key, the
prologue binding environment, registration and stream; the harness key it proves and its
authorization go to the owner as
:class:`~exec_server.relay.noise.stream.ValidationRequested` (the registry's
``/validate``); message 2 is sent only after
:meth:`~exec_server.relay.noise.noise_mux.NoiseStreamMux.validation_result` says yes,
within :attr:`NoiseMuxConfig.validation_timeout_s`. At most
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

**Message 2 ahead of the answer.** Message 2 depends on message 1 only, never on what
the registry says, so the owner may have it computed while the ``/validate`` round trip
is in flight (:meth:`ResponderHandshakes.prepare_answer`: two ML-KEM encapsulations, a
fresh ephemeral X25519 key, two exchanges; about half a millisecond here). It stays in
the pending record and is sent only after a yes: a refusal, a timeout or a reset drops
it unsent, and its fresh ephemeral key with it (each key serves one handshake). Nothing
here reads a clock or performs I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    DataBody,
    HandshakeBody,
    RelayFrame,
    ResetBody,
    ResumeBody,
    ack_frame,
    reset_frame,
)
from exec_server.relay.noise.codex_stream import CodexNoiseStream
from exec_server.relay.noise.errors import NoiseError, NoiseProtocolError
from exec_server.relay.noise.handshake import (
    MAX_AUTHORIZATION_BYTES,
    PendingResponderHandshake,
    noise_prologue,
)
from exec_server.relay.noise.keys import KeySource, NoiseIdentity
from exec_server.relay.noise.mux_types import (
    UNKNOWN_STREAM_REASON,
    AnsweredHandshake,
    ClaimAnswer,
    HandshakeFailed,
    HandshakeOutcome,
    PendingHandshake,
    WaitingHandshake,
    handshake_frame,
    is_flagged,
    message_digest,
)
from exec_server.relay.noise.stream import NOISE_RELAY_RESET_REASON, ValidationRequested
from exec_server.relay.stream_mux import MuxStream

if TYPE_CHECKING:
    from exec_server.relay.noise.noise_mux import NoiseStreamMux

__all__ = ["ResponderHandshakes"]


class ResponderHandshakes:
    """Handshakes a responder socket has read or holds (see the module docstring)."""

    def __init__(
        self,
        mux: NoiseStreamMux,
        identity: NoiseIdentity,
        keys: KeySource,
        environment_id: str | None,
        executor_registration_id: str | None,
    ) -> None:
        self._mux = mux
        self._identity = identity
        self._keys = keys
        self.environment_id = environment_id
        self.registration_id = executor_registration_id
        self.pending: dict[str, PendingHandshake] = {}
        self.waiting: dict[str, WaitingHandshake] = {}  # in arrival order
        self._next_validation_id = 0
        self.failed_handshakes = 0
        """Failed handshakes on the current socket (reset when the socket changes)."""
        self._cooldown_until = -1.0
        # The ephemeral ML-KEM key message 2 carries is never used (only hashed): one per
        # responder saves a key generation (about 0.1 ms) per handshake.
        self._unused_kem_public_key: bytes | None = None

    def holds(self, stream_id: str) -> bool:
        """Whether a message 1 for ``stream_id`` is being validated or waits for a slot."""
        return stream_id in self.pending or stream_id in self.waiting

    def on_reconnect(self) -> None:
        """A new socket: a fresh failure budget, no cooldown (handshakes are kept)."""
        self.failed_handshakes = 0
        self._cooldown_until = -1.0

    # ------------------------------------------------------------------ input

    def on_frame(self, frame: RelayFrame, now: float) -> None:
        """A frame for a stream without a completed handshake."""
        stream_id = frame.stream_id
        body = frame.body
        flagged = is_flagged(frame)
        mux = self._mux
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
        elif isinstance(body, ResumeBody) and flagged and mux.offers_reliable:
            self._on_flagged_resume(frame, body)
        elif isinstance(body, ResetBody) and self._drop_started(stream_id):
            mux.queue_noise_event(HandshakeFailed(stream_id, body.reason, remote=True))
            mux.handshakes[HandshakeOutcome.RESET_BY_PEER] += 1
            self._admit_waiting(now)
        # ack_frame, heartbeat, an unflagged resume (Codex's claim): ignored as 0.171 does

    def _on_flagged_resume(self, frame: RelayFrame, body: ResumeBody) -> None:
        stream_id = frame.stream_id
        if body.next_seq == 0 and frame.ack == 0:
            # An initiator's probe: tell it we are ours and have no message 2 for it. Its
            # opening claim travels with message 1: that one is answered only if message
            # 1 is still missing when output is taken (ClaimAnswer).
            if self.holds(stream_id):
                self._mux.queue_noise_frame(
                    ack_frame(stream_id, ack=0, ack_bits=RELIABLE_CAPABILITY_BIT)
                )
            else:
                self._mux.queue_noise_frame(ClaimAnswer(stream_id))
        elif not self.holds(stream_id):
            # A reliable stream this side does not have (a restarted environment).
            self._mux.queue_noise_frame(
                reset_frame(stream_id, UNKNOWN_STREAM_REASON, ack_bits=RELIABLE_CAPABILITY_BIT)
            )

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
        mux = self._mux
        mux.handshakes[outcome] += 1
        flag = RELIABLE_CAPABILITY_BIT if flagged else 0
        reason = NOISE_RELAY_RESET_REASON
        if flagged and outcome is HandshakeOutcome.DATA_BEFORE_HANDSHAKE:
            reason = UNKNOWN_STREAM_REASON
        mux.queue_noise_frame(reset_frame(stream_id, reason, ack_bits=flag))
        if failed:
            mux.queue_noise_event(HandshakeFailed(stream_id, outcome.value, remote=False))
            self.failed_handshakes += 1
            if self.failed_handshakes >= mux.noise.max_failed_handshakes:
                self._cooldown_until = now + mux.noise.failure_cooldown_s

    def _drop_started(self, stream_id: str) -> bool:
        """Forget a handshake being validated or waiting for a slot; whether there was one."""
        pending = self.pending.pop(stream_id, None)
        waiting = self.waiting.pop(stream_id, None)
        return pending is not None or waiting is not None

    def _holds_copy(self, stream_id: str, message1: bytes) -> bool:
        """Whether ``message1`` is an exact copy of a flagged message 1 already held."""
        pending = self.pending.get(stream_id)
        if pending is not None:
            return pending.reliable and pending.digest == message_digest(message1)
        waiting = self.waiting.get(stream_id)
        return waiting is not None and waiting.flagged and waiting.message1 == message1

    def _on_message1(self, stream_id: str, message1: bytes, flagged: bool, now: float) -> None:
        reliable = flagged and self._mux.offers_reliable
        if self.holds(stream_id):
            if reliable and self._holds_copy(stream_id, message1):
                return  # a copy of a message 1 already held
            self._drop_started(stream_id)
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.DUPLICATE, failed=True
            )
            self._admit_waiting(now)
            return
        outcome = self._admission(now)
        noise = self._mux.noise
        if outcome is HandshakeOutcome.TOO_MANY_PENDING and (
            len(self.waiting) < noise.max_waiting_handshakes
        ):
            self.waiting[stream_id] = WaitingHandshake(
                message1, flagged, now + noise.validation_timeout_s
            )
            return
        if outcome is not None:
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)
            return
        self._read_message1(stream_id, message1, flagged, now)

    def _admit_waiting(self, now: float) -> None:
        """Read held messages 1 while validation slots are free (oldest first)."""
        limit = self._mux.noise.max_pending_validations
        while self.waiting and len(self.pending) < limit:
            stream_id = next(iter(self.waiting))
            waiting = self.waiting.pop(stream_id)
            self._read_message1(stream_id, waiting.message1, waiting.flagged, now)

    def _read_message1(self, stream_id: str, message1: bytes, flagged: bool, now: float) -> None:
        reliable = flagged and self._mux.offers_reliable
        if self.registration_id is None or not self.environment_id:
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.REFUSED, failed=False
            )
            return
        prologue = noise_prologue(self.environment_id, self.registration_id, stream_id)
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
        self.pending[stream_id] = PendingHandshake(
            validation_id,
            handshake,
            now + self._mux.noise.validation_timeout_s,
            reliable,
            message_digest(message1),
        )
        self._mux.queue_noise_event(
            ValidationRequested(
                stream_id,
                validation_id,
                handshake.initiator_public_key,
                authorization,
                self.registration_id,
            )
        )

    def _admission(self, now: float) -> HandshakeOutcome | None:
        """Why a new handshake cannot start now (``None`` if it can)."""
        mux = self._mux
        if now < self._cooldown_until:
            return HandshakeOutcome.COOLING_DOWN
        if self.failed_handshakes >= mux.noise.max_failed_handshakes:
            self.failed_handshakes = 0  # the cooldown is over: a fresh budget
        if len(self.pending) >= mux.noise.max_pending_validations:
            return HandshakeOutcome.TOO_MANY_PENDING
        if len(mux.streams) + len(self.pending) + len(self.waiting) >= mux.config.max_streams:
            return HandshakeOutcome.TOO_MANY_STREAMS
        return None

    # ------------------------------------------------------------------ answers

    def prepare_answer(self, stream_id: str, validation_id: int) -> None:
        """Compute message 2 of a handshake being validated, without sending it (see the
        module docstring); a no-op for a stale id or an answer already prepared."""
        pending = self.pending.get(stream_id)
        if pending is None or pending.validation_id != validation_id:
            return
        if pending.answer is not None or pending.unanswerable:
            return
        try:
            pending.answer = pending.handshake.complete(
                unused_kem_public_key=self._unused_kem_key()
            )
        except NoiseError:
            pending.unanswerable = True

    def _unused_kem_key(self) -> bytes:
        if self._unused_kem_public_key is None:
            private = self._keys.mlkem768_private_key()
            self._unused_kem_public_key = private.public_key().public_bytes_raw()
        return self._unused_kem_public_key

    def validation_result(
        self, stream_id: str, validation_id: int, valid: bool, now: float
    ) -> None:
        """The registry's answer to :class:`ValidationRequested` (``valid`` false for a
        refusal, an error or a timeout). A stale answer (the stream was reset, reused or
        timed out meanwhile) is ignored."""
        pending = self.pending.get(stream_id)
        if pending is None or pending.validation_id != validation_id:
            return
        del self.pending[stream_id]
        self._complete(stream_id, pending, valid, now)
        self._admit_waiting(now)

    def _complete(self, stream_id: str, pending: PendingHandshake, valid: bool, now: float) -> None:
        mux = self._mux
        flagged = pending.reliable
        if not valid:
            self._refuse(
                stream_id, now, flagged=flagged, outcome=HandshakeOutcome.REFUSED, failed=True
            )
            return
        if len(mux.streams) >= mux.config.max_streams:
            outcome = HandshakeOutcome.TOO_MANY_STREAMS
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)
            return
        answer = pending.answer
        if answer is None and not pending.unanswerable:
            try:
                answer = pending.handshake.complete(unused_kem_public_key=self._unused_kem_key())
            except NoiseError:
                answer = None
        if answer is None:
            outcome = HandshakeOutcome.BAD_MESSAGE
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=True)
            return
        transport, message2 = answer
        frame = handshake_frame(stream_id, message2, flagged=flagged)
        stream: MuxStream
        if pending.reliable:
            stream = mux.reliable_stream(stream_id, transport, initiator=False, now=now)
            opened = mux.open_handshaken(stream, AnsweredHandshake(pending.digest, frame))
        else:
            stream = CodexNoiseStream(stream_id, transport, config=mux.config.stream)
            opened = mux.open_handshaken(stream, None)
        if opened:
            mux.queue_noise_frame(frame)
        else:
            outcome = HandshakeOutcome.TOO_MANY_STREAMS
            self._refuse(stream_id, now, flagged=flagged, outcome=outcome, failed=False)

    # ------------------------------------------------------------------ timers

    def deadline(self) -> float | None:
        """The soonest validation or waiting deadline."""
        deadline: float | None = None
        for pending in self.pending.values():
            if deadline is None or pending.deadline < deadline:
                deadline = pending.deadline
        if self.waiting:  # in arrival order: the first waits longest
            first = next(iter(self.waiting.values())).deadline
            if deadline is None or first < deadline:
                deadline = first
        return deadline

    def handle_timer(self, now: float) -> None:
        for stream_id, pending in list(self.pending.items()):
            if now >= pending.deadline:
                self.validation_result(stream_id, pending.validation_id, False, now)
        for stream_id, waiting in list(self.waiting.items()):
            if now < waiting.deadline:
                break
            del self.waiting[stream_id]
            outcome = HandshakeOutcome.TOO_MANY_PENDING
            self._refuse(stream_id, now, flagged=waiting.flagged, outcome=outcome, failed=False)
