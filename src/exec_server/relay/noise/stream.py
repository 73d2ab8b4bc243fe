"""Codex-compatible Noise relay streams, sans-IO (what 0.171 does per stream, §3.5).

One relay stream between a harness (initiator) and an environment (responder):

1. the harness sends ``resume{next_seq: 0}`` (it claims the stream id at the rendezvous),
   then ``handshake{message 1}`` carrying its ``harness_key_authorization``;
2. the environment reads message 1, asks the registry to validate the harness key
   (:class:`ValidationRequested`), and only when the registry says yes answers
   ``handshake{message 2}``;
3. then ``data`` frames both ways, each carrying exactly one Noise transport record:
   ``seq`` from 0 per direction, +1 per record, never wrapping; ``segment_index`` 0,
   ``segment_count`` 1, ``ack``/``ack_bits`` 0. Record plaintexts are the
   ``BE32(len) || JSON`` byte stream of :mod:`~exec_server.relay.noise.records`;
4. either side may end the stream with ``reset{"noise_relay_protocol_error"}`` (the
   reason Codex's Noise endpoints send for every reset, including a normal close).
   Reset reasons are unauthenticated relay control: they are reported, never trusted.

``ack_frame``, ``heartbeat`` and ``resume`` frames are ignored once the stream exists, as
Codex's executor ignores them; trace fields are ignored.

:class:`EncryptedStream` is both directions of one stream after the handshake (the
production relay uses it for streams with a Codex peer:
:mod:`~exec_server.relay.noise.codex_stream`). :class:`NoiseInitiatorStream` is a
minimal harness side of one stream, exactly as 0.171's harness behaves (it never offers
our reliable relay): the tests use it to play that harness. The environment side, with
0.171's admission bounds (pending validations, failed handshakes, active streams), is
:class:`~exec_server.relay.noise.noise_mux.NoiseStreamMux`.

Calls return lists of events; :class:`SendFrame` events carry the frames to write, in
order. Nothing here reads a clock, does I/O or logs secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from exec_server.relay.frame_codec import (
    RELAY_MESSAGE_FRAME_VERSION,
    DataBody,
    HandshakeBody,
    RelayFrame,
    data_frame,
    reset_frame,
    resume_frame,
)
from exec_server.relay.noise.cipher import NoiseTransport
from exec_server.relay.noise.errors import NoiseError, NoiseProtocolError
from exec_server.relay.noise.handshake import (
    MAX_AUTHORIZATION_BYTES,
    InitiatorHandshake,
    noise_prologue,
)
from exec_server.relay.noise.keys import SYSTEM_KEY_SOURCE, KeySource, NoiseIdentity, NoisePublicKey
from exec_server.relay.noise.records import (
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    RECORD_PLAINTEXT_BYTES,
    MessageDecoder,
    OrderedRecords,
    split_records,
)

__all__ = [
    "CODEX_MAX_ACTIVE_STREAMS",
    "HARNESS_KEY_VALIDATION_TIMEOUT_S",
    "MAX_FAILED_HANDSHAKES",
    "MAX_PENDING_VALIDATIONS",
    "NOISE_RELAY_RESET_REASON",
    "EncryptedStream",
    "HandshakeCompleted",
    "MessageReceived",
    "NoiseEvent",
    "NoiseInitiatorStream",
    "SendFrame",
    "StreamClosed",
    "ValidationRequested",
    "handshake_frame",
]

NOISE_RELAY_RESET_REASON = "noise_relay_protocol_error"
"""The reset reason Codex 0.171's Noise endpoints send (and the only one we send)."""

CODEX_MAX_ACTIVE_STREAMS = 128
"""Codex 0.171's ``MAX_ACTIVE_NOISE_RELAY_STREAMS`` (per executor socket)."""
MAX_PENDING_VALIDATIONS = 32
"""Handshakes waiting for the registry at once (Codex ``MAX_PENDING_HANDSHAKE_VALIDATIONS``)."""
MAX_FAILED_HANDSHAKES = 8
"""Failed handshakes per socket after which 0.171 closes it (our responder pauses
handshakes instead)."""
HARNESS_KEY_VALIDATION_TIMEOUT_S = 10.0
"""How long a handshake may wait for the registry (Codex ``HARNESS_KEY_VALIDATION_TIMEOUT``)."""


def handshake_frame(stream_id: str, payload: bytes) -> RelayFrame:
    """A ``handshake{payload}`` frame."""
    return RelayFrame(RELAY_MESSAGE_FRAME_VERSION, stream_id, 0, 0, HandshakeBody(payload))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SendFrame:
    """Write this frame to the socket (in event order)."""

    frame: RelayFrame


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The stream is encrypted and authenticated both ways; messages may flow."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole JSON-RPC message (compact JSON bytes), in the peer's order."""

    stream_id: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The stream is over; nothing more happens on it. ``remote`` is true when the peer
    reset it (``reason`` is then its unauthenticated reason, for diagnostics only),
    false when this side did (``reason`` says why)."""

    stream_id: str
    reason: str
    remote: bool


@dataclass(frozen=True, slots=True)
class ValidationRequested:
    """Ask the registry ``/validate`` whether ``harness_public_key`` (authenticated by
    message 1) may use this registration on ``stream_id``, then report the answer with
    :meth:`~exec_server.relay.noise.noise_mux.NoiseStreamMux.validation_result` and
    this ``validation_id``."""

    stream_id: str
    validation_id: int
    harness_public_key: NoisePublicKey
    authorization: str = field(repr=False)
    executor_registration_id: str | None = None
    """The registration message 1 was read under (the Noise multiplexer sets it)."""


NoiseEvent = SendFrame | HandshakeCompleted | MessageReceived | StreamClosed | ValidationRequested


# --------------------------------------------------------------------------- encrypted stream


def _check_data(data: DataBody) -> None:
    if data.segment_index != 0 or data.segment_count != 1 or not data.payload:
        raise NoiseProtocolError(
            "Noise relay data frame must carry one non-empty record (segment 0 of 1)"
        )


class EncryptedStream:
    """Both directions of one stream after the handshake: seq numbering, record cutting,
    reordering, decryption and message reassembly."""

    __slots__ = ("_decoder", "_inbound", "_next_seq", "_record_bytes", "_transport", "stream_id")

    def __init__(
        self,
        stream_id: str,
        transport: NoiseTransport,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        record_bytes: int = RECORD_PLAINTEXT_BYTES,
    ) -> None:
        self.stream_id = stream_id
        self._transport = transport
        self._next_seq = 0
        self._inbound = OrderedRecords()
        self._decoder = MessageDecoder(max_message_bytes)
        self._record_bytes = record_bytes

    def __repr__(self) -> str:
        return f"EncryptedStream({self.stream_id!r}, next_seq={self._next_seq})"

    @property
    def next_seq(self) -> int:
        """The seq of the next record this side sends."""
        return self._next_seq

    @property
    def handshake_hash(self) -> bytes:
        return self._transport.handshake_hash

    def encrypt_messages(self, messages: Sequence[bytes]) -> list[RelayFrame]:
        """``data`` frames carrying ``messages`` (each compact JSON). Several messages
        may share a record; a message over 60 KiB spans several."""
        records = split_records(messages, self._record_bytes)
        first = self._next_seq
        if first + len(records) - 1 > MAX_SEQ:
            raise NoiseProtocolError("Noise relay sequence number exhausted")
        encrypt = self._transport.encrypt
        stream_id = self.stream_id
        frames = [
            data_frame(stream_id, first + i, encrypt(record)) for i, record in enumerate(records)
        ]
        self._next_seq = first + len(records)
        return frames

    def receive_data(self, data: DataBody) -> list[bytes]:
        """Messages completed by this ``data`` frame (maybe none: out of order, a
        duplicate, or a message still incomplete). Raises :class:`NoiseError`."""
        _check_data(data)
        messages: list[bytes] = []
        decrypt = self._transport.decrypt
        for record in self._inbound.push(data.seq, data.payload):
            messages += self._decoder.push(decrypt(record))
        return messages


# --------------------------------------------------------------------------- initiator


class NoiseInitiatorStream:
    """The harness side of one Noise relay stream (one per websocket, as Codex does).

    ::

        stream = NoiseInitiatorStream(stream_id=str(uuid4()), environment_id=bundle.env,
                                      executor_registration_id=bundle.registration_id,
                                      executor_public_key=bundle.executor_key,
                                      authorization=bundle.authorization, identity=identity)
        send(stream.start())                         # resume + handshake
        for event in stream.receive_frame(frame): ...  # HandshakeCompleted, MessageReceived...
        send(stream.send_messages([b'{"id":1,...}']))

    ``identity`` must be the key sent to ``/connect`` for this bundle.
    """

    def __init__(
        self,
        *,
        stream_id: str,
        environment_id: str,
        executor_registration_id: str,
        executor_public_key: NoisePublicKey,
        authorization: str,
        identity: NoiseIdentity,
        keys: KeySource = SYSTEM_KEY_SOURCE,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.stream_id = stream_id
        self._environment_id = environment_id
        self._registration_id = executor_registration_id
        self._executor_key = executor_public_key
        self._authorization = authorization
        self._identity = identity
        self._keys = keys
        self._max_message_bytes = max_message_bytes
        self._handshake: InitiatorHandshake | None = None
        self._channel: EncryptedStream | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"NoiseInitiatorStream({self.stream_id!r}, state={self.state})"

    @property
    def state(self) -> str:
        """``idle`` (before :meth:`start`), ``handshaking``, ``open`` or ``closed``."""
        if self._closed:
            return "closed"
        if self._channel is not None:
            return "open"
        return "handshaking" if self._handshake is not None else "idle"

    @property
    def channel(self) -> EncryptedStream | None:
        return self._channel

    def start(self) -> list[RelayFrame]:
        """``resume{0}`` then ``handshake{message 1}``."""
        if self._handshake is not None or self._closed:
            raise NoiseProtocolError("the Noise stream is already started")
        authorization = self._authorization.encode()
        if len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise NoiseProtocolError("harness key authorization is too long")
        prologue = noise_prologue(self._environment_id, self._registration_id, self.stream_id)
        self._handshake, message1 = InitiatorHandshake.start(
            self._identity, self._executor_key, prologue, authorization, keys=self._keys
        )
        return [resume_frame(self.stream_id, 0), handshake_frame(self.stream_id, message1)]

    def receive_frame(self, frame: RelayFrame) -> list[NoiseEvent]:
        """Process one frame for this stream (frames for other ids are ignored)."""
        if self._closed or frame.stream_id != self.stream_id:
            return []
        body = frame.body
        kind = None if body is None else body.kind
        if kind == "reset":
            self._closed = True
            return [StreamClosed(self.stream_id, frame.reset.reason, remote=True)]
        try:
            if kind == "handshake":
                return self._on_handshake(frame.handshake.payload)
            if kind == "data":
                channel = self._channel
                if channel is None:
                    raise NoiseProtocolError(
                        "Noise relay received data before handshake completion"
                    )
                return [
                    MessageReceived(self.stream_id, message)
                    for message in channel.receive_data(frame.data)
                ]
        except NoiseError as exc:
            return self._fail(str(exc))
        return []  # ack_frame, resume, heartbeat

    def _on_handshake(self, payload: bytes) -> list[NoiseEvent]:
        handshake = self._handshake
        if handshake is None or self._channel is not None:
            raise NoiseProtocolError("Noise relay received an unexpected handshake frame")
        transport = handshake.finish(payload)
        self._handshake = handshake
        self._channel = EncryptedStream(
            self.stream_id, transport, max_message_bytes=self._max_message_bytes
        )
        return [HandshakeCompleted(self.stream_id)]

    def _fail(self, reason: str) -> list[NoiseEvent]:
        self._closed = True
        return [
            SendFrame(reset_frame(self.stream_id, NOISE_RELAY_RESET_REASON)),
            StreamClosed(self.stream_id, reason, remote=False),
        ]

    def send_messages(self, messages: Sequence[bytes]) -> list[RelayFrame]:
        """``data`` frames for ``messages``; the stream must be open."""
        channel = self._channel
        if channel is None or self._closed:
            raise NoiseProtocolError(f"the Noise stream is {self.state}, not open")
        return channel.encrypt_messages(messages)

    def close(self) -> list[RelayFrame]:
        """End the stream: a reset for the peer (nothing if already closed)."""
        if self._closed:
            return []
        self._closed = True
        return [reset_frame(self.stream_id, NOISE_RELAY_RESET_REASON)]
