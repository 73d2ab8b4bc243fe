"""Sans-IO multiplexer: many :class:`ReliableStream` s over one physical relay socket.

The owner (an asyncio adapter, or a test) passes every binary websocket message to
:meth:`StreamMux.receive_bytes`, sends messages with :meth:`StreamMux.send_message`, writes
what :meth:`StreamMux.data_to_send` returns (each item is one binary websocket message), takes
events from :meth:`StreamMux.next_event`, and calls :meth:`StreamMux.handle_timer` at
:meth:`StreamMux.get_timer`. ``now`` is always an argument (seconds, any monotonic origin).
The streams themselves are only read through :attr:`StreamMux.streams`: every call that
changes one goes through the mux, which then knows that the stream may have output.

Routing rules (Codex E1 ``run_multiplexed_executor`` plus reliability):

* Undecodable or invalid frames are dropped and counted in :attr:`StreamMux.dropped` under
  their :class:`~exec_server.relay.errors.InvalidFrameReason`; nothing inbound raises.
* Frames are routed by ``stream_id``. A frame for an id the mux does not route opens a
  stream (:class:`~exec_server.relay.events.StreamOpened`) or is refused, counted, and
  where the peer would otherwise wait answered with a ``reset``, under the rules of
  :mod:`~exec_server.relay.mux_admission` (Codex's E1 rules: a data frame opens the
  stream on the environment side; plus ours for reliable peers and restarts). The
  harness side only knows the streams it opened (:meth:`StreamMux.open_stream`).
* ``reset`` ends only its stream. Ended stream ids are remembered for those rules
  (``max_retired_stream_ids``, oldest forgotten first).
* Output is fair: one frame per stream per round, starting from a different stream on each
  call, optionally capped at ``max_bytes`` per call. Events are also taken round-robin.
* :meth:`StreamMux.pause_output` holds one stream's frames back (the rendezvous asks for
  it while a legacy harness cannot keep up); the stream's send buffer then fills and its
  sender waits, while every other stream keeps flowing. A reset still goes out.

The limits, roles and drop reasons are in :mod:`~exec_server.relay.mux_config` (and
importable from here); how a writer pass collects frames is in
:mod:`~exec_server.relay.mux_output`.

Memory is bounded by ``max_streams`` times the per-stream bounds of
:class:`ReliableStreamConfig`, plus ``max_retired_stream_ids`` ids and
``max_pending_control_frames`` queued replies.
"""

from __future__ import annotations

import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import ClassVar, cast

from exec_server.relay.errors import InvalidFrame, StreamClosed
from exec_server.relay.events import MuxEvent, StreamOpened
from exec_server.relay.frame_codec import (
    MAX_OUTBOUND_STREAM_ID_BYTES,
    RelayFrame,
    decode_frame,
    reset_for_peer,
)
from exec_server.relay.frame_encoder import OutboundPayload
from exec_server.relay.mux_admission import admit
from exec_server.relay.mux_config import (
    MAX_PENDING_CONTROL_FRAMES,
    MAX_RETIRED_STREAM_IDS,
    MAX_STREAMS,
    MuxConfig,
    MuxDropReason,
    MuxRole,
    MuxStream,
)
from exec_server.relay.mux_output import OutputBatch, streams_in_turn
from exec_server.relay.reliable_stream import ReliableStream

__all__ = [
    "MAX_PENDING_CONTROL_FRAMES",
    "MAX_RETIRED_STREAM_IDS",
    "MAX_STREAMS",
    "MuxConfig",
    "MuxDropReason",
    "MuxRole",
    "MuxStream",
    "StreamMux",
]


class StreamMux:
    """All relay streams of one physical socket, for one side (see the module docstring).

    Call :meth:`data_to_send` after every other call (``receive_bytes``, ``handle_timer``,
    ``next_event``, ``send_message``...): any of them can create output.

    A stream that ends (reset by either side, protocol error, idle timeout, socket loss
    of a legacy stream) leaves the routing table at once, so its id is free again for a
    legacy peer, but stays owned by the mux until its reset frame is written and its events
    are taken; it keeps counting towards ``max_streams`` until then.
    """

    output_batch: ClassVar[type[OutputBatch]] = OutputBatch
    """What collects a writer pass's frames (see :mod:`~exec_server.relay.mux_output`)."""

    def __init__(self, role: MuxRole, config: MuxConfig | None = None) -> None:
        self.role = role
        self.config = config or MuxConfig()
        self.dropped: Counter[str] = Counter()
        """Inbound frames dropped at mux level, by reason (``InvalidFrameReason`` values and
        ``MuxDropReason`` values). Per-stream drops are in each stream's ``stats``."""
        self._streams: dict[str, MuxStream] = {}  # live streams, by id
        self._closing: dict[MuxStream, None] = {}  # ended, output or events pending
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._control: deque[bytes] = deque()
        self._opened: deque[StreamOpened] = deque()
        self._ready: deque[MuxStream] = deque()  # streams with events, in turn
        self._ready_set: set[MuxStream] = set()
        self._rotation = 0
        # Each stream's next deadline, refreshed after every call that can move it, so
        # get_timer() costs O(streams) instead of rescanning every send window.
        self._timers: dict[MuxStream, float] = {}
        # Streams that may have output; data_to_send skips the others.
        self._pending_output: set[MuxStream] = set()
        # Streams whose output is held back (pause_output).
        self._paused: set[MuxStream] = set()
        # Streams whose events are held back (hold_events).
        self._held: set[MuxStream] = set()

    # ------------------------------------------------------------------ streams

    @property
    def streams(self) -> Mapping[str, MuxStream]:
        """Live streams by id (read-only view); ended streams are not in it."""
        return MappingProxyType(self._streams)

    def open_stream(self, now: float, stream_id: str | None = None) -> ReliableStream:
        """Harness side: start a new stream (a fresh UUIDv4 id unless one is given).

        Raises ``ValueError`` for an id that is empty, padded, over 128 bytes, in use or
        recently ended, and ``RuntimeError`` over ``max_streams``.
        """
        if stream_id is None:
            stream_id = str(uuid.uuid4())
        if (
            not stream_id.strip()
            or stream_id != stream_id.strip()
            or len(stream_id.encode()) > MAX_OUTBOUND_STREAM_ID_BYTES
        ):
            raise ValueError(f"invalid relay stream id {stream_id!r}")
        if stream_id in self._streams or stream_id in self._retired:
            raise ValueError(f"relay stream id {stream_id!r} was already used on this socket")
        if self._stream_count() >= self.config.max_streams:
            raise RuntimeError(f"too many relay streams (max {self.config.max_streams})")
        stream = ReliableStream(stream_id, initiator=True, now=now, config=self.config.stream)
        self._adopt(stream)
        return stream

    def send_message(
        self,
        stream_id: str,
        payload: OutboundPayload,
        now: float,
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> bool:
        """Queue one whole message on a live stream (see ``ReliableStream.send_message``);
        its frames come out of :meth:`data_to_send`. Returns whether the stream may have
        a frame to write now (false: the message waits behind a full window, and the
        acknowledgement that opens it is the time to write).

        Raises ``StreamClosed`` for a stream that ended or never existed, and whatever the
        stream raises: ``SendBlocked`` (backpressure: retry after progress),
        ``MessageTooLarge``, ``ValueError`` for an empty payload.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            ended = next((s for s in self._closing if s.stream_id == stream_id), None)
            raise StreamClosed(stream_id, None if ended is None else ended.close_reason)
        self._pending_output.add(stream)
        if type(stream) is ReliableStream:
            stream.send_message(payload, now, traceparent=traceparent, tracestate=tracestate)
            return stream.has_frame_due
        # other kinds of stream take bytes
        stream.send_message(bytes(payload), now, traceparent=traceparent, tracestate=tracestate)
        return True

    def reset_stream(self, stream_id: str, reason: str) -> None:
        """Reset one live stream (no-op for an unknown id)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.reset(reason)
            self._after_input(stream)

    def pause_output(self, stream_id: str) -> None:
        """Hold back the stream's frames (a reset still goes out) until
        :meth:`resume_output`; no-op for an unknown id."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._paused.add(stream)

    def resume_output(self, stream_id: str) -> None:
        """Let a paused stream's frames out again."""
        stream = self._streams.get(stream_id)
        if stream is not None and stream in self._paused:
            self._paused.discard(stream)
            self._pending_output.add(stream)

    @property
    def paused_streams(self) -> int:
        return len(self._paused)

    def hold_events(self, stream_id: str) -> None:
        """Stop handing out the stream's events (its consumer is full) until
        :meth:`release_events`. A reliable stream then stops acknowledging new data once
        ``max_receive_buffer_bytes`` wait, which pushes back on the peer; a legacy peer
        cannot be slowed down, so holding a legacy stream only buffers."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._held.add(stream)

    def release_events(self, stream_id: str) -> None:
        """Hand out the stream's events again (see :meth:`hold_events`)."""
        for stream in self._held:
            if stream.stream_id == stream_id:
                self._held.discard(stream)
                if stream.has_events and stream not in self._ready_set:
                    self._ready_set.add(stream)
                    self._ready.append(stream)
                return

    def adopt_stream(self, stream: MuxStream, *, announce: bool = True) -> None:
        """Take over a stream created elsewhere (the Noise layer creates one once its
        handshake completes); with ``announce``, a :class:`StreamOpened` event tells the
        owner. Raises ``ValueError`` for an id in use and ``RuntimeError`` over
        ``max_streams``."""
        if stream.stream_id in self._streams:
            raise ValueError(f"relay stream id {stream.stream_id!r} is in use on this socket")
        if self._stream_count() >= self.config.max_streams:
            raise RuntimeError(f"too many relay streams (max {self.config.max_streams})")
        self._retired.pop(stream.stream_id, None)
        if announce:
            self._opened.append(StreamOpened(stream.stream_id))
        self._adopt(stream)

    def _stream_count(self) -> int:
        return len(self._streams) + len(self._closing)

    def _adopt(self, stream: MuxStream) -> None:
        self._streams[stream.stream_id] = stream
        self._after_input(stream)

    # ------------------------------------------------------------------ input

    def receive_bytes(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one binary websocket message. Never raises for bad input."""
        try:
            frame = decode_frame(data, self.config.frame_limits)
        except InvalidFrame as invalid:
            self.dropped[invalid.reason] += 1
            return
        self.receive_frame(frame, now)

    def receive_frame(self, frame: RelayFrame, now: float) -> None:
        """Route one already validated frame (:meth:`receive_bytes` does the validation)."""
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            stream = self._accept(frame, now)
            if stream is None:
                return
        stream.receive_frame(frame, now)
        self._after_input(stream)

    def _accept(self, frame: RelayFrame, now: float) -> MuxStream | None:
        stream_id = frame.stream_id
        refusal = admit(frame, self.role, self.config, self._retired, self._stream_count())
        if refusal is not None:
            self.dropped[refusal.drop] += 1
            if refusal.reset is not None:
                self._reply_reset(stream_id, refusal.reset, refusal.reliable)
            return None
        self._retired.pop(stream_id, None)
        stream = ReliableStream(stream_id, initiator=False, now=now, config=self.config.stream)
        self._opened.append(StreamOpened(stream_id))
        self._adopt(stream)
        return stream

    def _reply_reset(self, stream_id: str, reason: str, reliable: bool) -> None:
        if len(self._control) >= self.config.max_pending_control_frames:
            self.dropped[MuxDropReason.CONTROL_QUEUE_FULL] += 1
            return
        self._control.append(reset_for_peer(stream_id, reason, reliable=reliable))

    # ------------------------------------------------------------------ output

    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` may have something without a timer firing."""
        return bool(self._control or self._pending_output)

    def has_output_now(self, now: float) -> bool:
        """Whether :meth:`data_to_send` at ``now`` would return anything, precisely where
        :meth:`has_output` is conservative: a stream marked as maybe having output that
        has no frame due (an acknowledgement that opened an empty window) is unmarked,
        so the owner need not run a writer pass for it. A due timer counts as output
        (:meth:`handle_timer` comes first)."""
        if self._control:
            return True
        if type(self).data_to_send is not StreamMux.data_to_send:
            return self.has_output()  # a subclass may add frames of its own
        pending = self._pending_output
        if pending:
            paused = self._paused
            for stream in list(pending):
                if type(stream) is not ReliableStream or (
                    stream.has_frame_due and (stream not in paused or stream.is_closed)
                ):
                    return True
                if stream not in paused:
                    pending.discard(stream)
        timers = self._timers
        return bool(timers) and min(timers.values()) <= now

    def try_send_now(self, stream_id: str, message: memoryview, now: float) -> memoryview | None:
        """The fast path of :meth:`send_message` then :meth:`data_to_write` for a
        ``message_with_headroom`` message on a live reliable stream, taken only when the
        message's frame is all that writer pass would produce (:meth:`has_output_now` is
        false and the stream is not paused): returns that frame, framed in place
        (``ReliableStream.try_send_now``), to be written before any other frame.
        ``None``: nothing changed, call :meth:`send_message`."""
        stream = self._streams.get(stream_id)
        if (
            type(stream) is not ReliableStream
            or not stream.nothing_unsent
            or stream in self._paused
            or self.has_output_now(now)
        ):
            return None
        frame = stream.try_send_now(message, now)
        if frame is not None:
            self._rotation += 1  # the writer pass it replaces would have turned it
            # The stream's deadline can only have moved later, except for the new
            # segment's retransmission timeout: an earlier cached value is harmless.
            timers = self._timers
            deadline = now + stream.rto_s
            cached = timers.get(stream)
            if cached is None or deadline < cached:
                timers[stream] = deadline
        return frame

    def data_to_send(
        self, now: float, max_bytes: int | None = None, *, headroom: int = 0
    ) -> list[bytes | bytearray]:
        """Encoded frames to write, one binary websocket message each.

        Streams take turns, one frame each per round; with ``max_bytes`` the call stops
        once that many bytes are collected (the rest comes out next call). With
        ``headroom``, each frame is a ``bytearray`` whose first ``headroom`` bytes are
        free for the websocket writer (``encode_frame_after``); ``max_bytes`` counts them.
        """
        # Without framing in place the batch holds no view.
        return cast(list[bytes | bytearray], self._collect(now, max_bytes, headroom, False))

    def data_to_write(
        self, now: float, max_bytes: int | None = None, *, headroom: int = 0
    ) -> list[bytes | bytearray | memoryview]:
        """:meth:`data_to_send` for a writer that also takes a ``memoryview`` to copy: a
        data frame carrying a whole ``message_with_headroom`` message comes as a view of
        the frame, framed in place (``encode_frame_for_socket``; valid until that
        message's next frame is encoded, so write it before calling again). A subclass
        that adds frames of its own in ``data_to_send`` gets its ``data_to_send``."""
        if type(self).data_to_send is not StreamMux.data_to_send:
            return list(self.data_to_send(now, max_bytes, headroom=headroom))
        return self._collect(now, max_bytes, headroom, bool(headroom))

    def _collect(
        self, now: float, max_bytes: int | None, headroom: int, in_place: bool
    ) -> list[bytes | bytearray | memoryview]:
        batch = self.output_batch(max_bytes, headroom, in_place, self._pending_output)
        control = self._control
        while control and batch.has_room():
            batch.add(control.popleft())
        streams = [*self._streams.values(), *self._closing]
        if streams:
            start = self._rotation % len(streams)
            self._rotation += 1
            active = streams_in_turn(
                streams, start, self._pending_output, self._timers, self._paused, now
            )
            while active and batch.has_room():
                if len(active) == 1:  # a round of one stream: take its frames in a row
                    batch.drain(active[0], now)
                    break
                active = batch.round(active, now)
        for stream in batch.touched:
            self._update(stream)
        return batch.frames

    # ------------------------------------------------------------------ events

    def next_event(self) -> MuxEvent | None:
        """The next event of any stream (streams take turns), or ``None``."""
        if self._opened:
            return self._opened.popleft()
        while self._ready:
            stream = self._ready.popleft()
            if stream in self._held:  # release_events puts it back in turn
                self._ready_set.discard(stream)
                continue
            event = stream.next_event()
            self._pending_output.add(stream)  # taking a message may reopen its window
            if stream.has_events:
                self._ready.append(stream)
            else:
                self._ready_set.discard(stream)
                self._update(stream)
            if event is not None:
                return event
        return None

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` may return an event (false: it would return ``None``)."""
        if type(self).next_event is not StreamMux.next_event:
            return True  # a subclass may have events of its own
        return bool(self._opened or self._ready)

    def events(self) -> Iterator[MuxEvent]:
        """Take every pending event."""
        while (event := self.next_event()) is not None:
            yield event

    # ------------------------------------------------------------------ bookkeeping

    def _after_input(self, stream: MuxStream) -> None:
        """After a call that may have changed anything about ``stream``."""
        self._pending_output.add(stream)
        if stream.has_events and stream not in self._ready_set and stream not in self._held:
            self._ready_set.add(stream)
            self._ready.append(stream)
        self._update(stream)

    def _update(self, stream: MuxStream) -> None:
        """Refresh the cached deadline; move an ended stream out of routing, then forget
        it once it has nothing left to write or report."""
        deadline = stream.get_timer()
        if deadline is None:
            self._timers.pop(stream, None)
        else:
            self._timers[stream] = deadline
        if not stream.is_closed:
            return
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._closing[stream] = None
            if self.config.max_retired_stream_ids:
                self._retired[stream.stream_id] = None
                self._retired.move_to_end(stream.stream_id)
                while len(self._retired) > self.config.max_retired_stream_ids:
                    self._retired.popitem(last=False)
        if stream.is_finished and stream in self._closing:
            del self._closing[stream]
            self._pending_output.discard(stream)
            self._paused.discard(stream)
            self._held.discard(stream)

    # ------------------------------------------------------------------ timers, connection

    def get_timer(self) -> float | None:
        """The earliest deadline of any stream, or ``None``.

        Deadlines are cached per stream and refreshed by every mux call that can move them;
        calling a stream's own ``reset`` directly can only leave an early (harmless) value.
        """
        return min(self._timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Run every stream deadline that is due."""
        for stream in [s for s, deadline in self._timers.items() if deadline <= now]:
            stream.handle_timer(now)
            self._after_input(stream)

    def connection_lost(self, now: float) -> None:
        """The socket closed: reliable and probing streams wait for :meth:`on_reconnect`;
        legacy streams end."""
        self._control.clear()
        self._paused.clear()  # the rendezvous repeats its pauses on the next socket
        for stream in [*self._streams.values(), *self._closing]:
            stream.connection_lost(now)
            self._after_input(stream)

    def on_reconnect(self, now: float) -> None:
        """A new socket replaced the old one: every reliable stream resumes."""
        for stream in [*self._streams.values(), *self._closing]:
            stream.on_reconnect(now)
            self._after_input(stream)
