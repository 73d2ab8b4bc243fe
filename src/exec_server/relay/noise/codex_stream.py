"""A Noise relay stream whose peer is a Codex 0.171 endpoint, as a multiplexer stream.

:class:`CodexNoiseStream` speaks exactly what 0.171 speaks after the handshake
(codex-0171.md §3.5, :class:`~exec_server.relay.noise.stream.EncryptedStream`): messages
become the ``BE32(len) || JSON`` byte stream, cut into records of at most 60 KiB of
plaintext, each encrypted and sent as one ``data`` frame (``seq`` from 0, segment 0 of
1, ``ack``/``ack_bits`` 0); inbound records are put back in ``seq`` order, deduplicated
and decrypted in order. There are no acknowledgements, no retransmissions and no resume:
a Codex peer has none, so the stream ends with its socket (``connection_lost``), like a
legacy cleartext stream. Every reset it sends says ``noise_relay_protocol_error``, the
only reason 0.171 sends.

It has the verbs of :class:`~exec_server.relay.reliable_stream.ReliableStream` that
:class:`~exec_server.relay.stream_mux.StreamMux` drives (:class:`MuxStream`), so the
Noise multiplexer adopts it like any other stream. Its :attr:`mode` is ``LEGACY``: the
peer cannot be slowed down or resumed. Sending is bounded like a legacy stream's:
``send_message`` raises ``SendBlocked`` while ``max_send_buffer_bytes`` of records wait
for the socket (one message is always admitted into an empty buffer).
"""

from __future__ import annotations

from collections import deque

from exec_server.relay.errors import MessageTooLarge, SendBlocked, StreamClosed
from exec_server.relay.events import MessageReceived, PeerMode, StreamEvent, StreamReset
from exec_server.relay.frame_codec import DataBody, RelayFrame, ResetBody, reset_frame
from exec_server.relay.noise.cipher import NoiseTransport
from exec_server.relay.noise.errors import NoiseError
from exec_server.relay.noise.records import MAX_MESSAGE_BYTES
from exec_server.relay.noise.stream import NOISE_RELAY_RESET_REASON, EncryptedStream
from exec_server.relay.stream_config import ReliableStreamConfig, StreamDropReason, StreamStats

__all__ = ["CodexNoiseStream"]


class CodexNoiseStream:
    """One encrypted stream with a Codex peer (see the module docstring)."""

    def __init__(
        self,
        stream_id: str,
        transport: NoiseTransport,
        *,
        config: ReliableStreamConfig | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.config = cfg = config or ReliableStreamConfig()
        self._max_message_bytes = min(cfg.max_message_bytes, MAX_MESSAGE_BYTES)
        self._channel = EncryptedStream(
            stream_id, transport, max_message_bytes=self._max_message_bytes
        )
        self.stats = StreamStats()
        self._out: deque[RelayFrame] = deque()
        self._out_bytes = 0
        self._events: deque[StreamEvent] = deque()
        self._closed_reason: str | None = None
        self._pending_reset = False
        self._connected = True

    def __repr__(self) -> str:
        return f"CodexNoiseStream({self.stream_id!r}, closed={self._closed_reason!r})"

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> PeerMode:
        return PeerMode.LEGACY

    @property
    def is_closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._closed_reason

    @property
    def is_finished(self) -> bool:
        return self.is_closed and not self._pending_reset and not self._events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def buffered_send_bytes(self) -> int:
        """Ciphertext bytes waiting for the socket."""
        return self._out_bytes

    @property
    def next_send_seq(self) -> int:
        return self._channel.next_seq

    # ------------------------------------------------------------------ sending

    def can_send(self, nbytes: int) -> bool:
        return self.is_closed or not (
            self._out_bytes and self._out_bytes + nbytes > self.config.max_send_buffer_bytes
        )

    def send_message(
        self,
        payload: bytes,
        now: float,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Encrypt one message into records now (trace context is not carried: 0.171
        never sets it). Raises ``StreamClosed``, ``ValueError`` (empty),
        ``MessageTooLarge`` (over 64 MiB) or ``SendBlocked``."""
        if self._closed_reason is not None:
            raise StreamClosed(self.stream_id, self._closed_reason)
        size = len(payload)
        if size == 0:
            raise ValueError("relay messages must not be empty")
        if size > self._max_message_bytes:
            raise MessageTooLarge(size, self._max_message_bytes, "over the Noise message limit")
        if not self.can_send(size):
            raise SendBlocked("relay send buffer is full")
        try:
            frames = self._channel.encrypt_messages([payload])
        except NoiseError as exc:  # the seq space is exhausted: the stream is over
            self._close(str(exc), remote=False, send_reset=True)
            raise StreamClosed(self.stream_id, self._closed_reason) from None
        for frame in frames:
            self._out_bytes += len(frame.data.payload)
        self._out.extend(frames)
        self.stats.messages_sent += 1

    def reset(self, reason: str) -> None:
        """End the stream; the peer gets ``reset{noise_relay_protocol_error}``."""
        if self._closed_reason is None:
            self._close(reason, remote=False, send_reset=True, emit=False)

    # ------------------------------------------------------------------ output

    def next_frame(self, now: float) -> RelayFrame | None:
        if not self._connected:
            return None
        if self._pending_reset:
            self._pending_reset = False
            return reset_frame(self.stream_id, NOISE_RELAY_RESET_REASON)
        if not self._out:
            return None
        frame = self._out.popleft()
        self._out_bytes -= len(frame.data.payload)
        self.stats.data_frames_sent += 1
        return frame

    def frames_to_send(self, now: float, max_frames: int | None = None) -> list[RelayFrame]:
        out: list[RelayFrame] = []
        while max_frames is None or len(out) < max_frames:
            if (frame := self.next_frame(now)) is None:
                break
            out.append(frame)
        return out

    # ------------------------------------------------------------------ input

    def receive_frame(self, frame: RelayFrame, now: float) -> None:
        if self._closed_reason is not None:
            self.stats.dropped[StreamDropReason.CLOSED] += 1
            return
        body = frame.body
        if isinstance(body, ResetBody):
            self._close(body.reason, remote=True, send_reset=False)
        elif isinstance(body, DataBody):
            try:
                messages = self._channel.receive_data(body)
            except NoiseError as exc:
                self._close(str(exc), remote=False, send_reset=True)
                return
            for message in messages:
                self._events.append(MessageReceived(self.stream_id, message))
                self.stats.messages_received += 1
        else:
            # ack_frame, resume, heartbeat, a handshake on an open stream: Codex's
            # executor ignores all but the handshake, which the Noise multiplexer
            # handles before the frame gets here.
            self.stats.dropped[StreamDropReason.LEGACY_CONTROL] += 1

    def next_event(self) -> StreamEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ timers, socket

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def connection_lost(self, now: float) -> None:
        """A Codex peer cannot resume: the stream ends with its socket."""
        if self._closed_reason is None:
            self._close("connection_lost", remote=False, send_reset=False)

    def on_reconnect(self, now: float) -> None:
        self.connection_lost(now)
        self._connected = True  # lets a pending reset out

    def _close(self, reason: str, *, remote: bool, send_reset: bool, emit: bool = True) -> None:
        self._closed_reason = reason
        self._pending_reset = send_reset
        self._out.clear()
        self._out_bytes = 0
        if emit:
            self._events.append(StreamReset(self.stream_id, reason, remote))
