"""Test support: a simulated relay path between sans-IO endpoints, with a manual clock.

Frames travel as encoded bytes and are decoded with full validation on arrival, so every
frame an endpoint emits is also checked against the wire rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exec_server.relay.errors import InvalidFrame
from exec_server.relay.events import MessageReceived, StreamEvent
from exec_server.relay.frame_codec import (
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig

STREAM_ID = "3f1c2a9e-5b7d-4c1e-9f00-0123456789ab"


def take_events(stream: ReliableStream) -> list[StreamEvent]:
    events = []
    while (event := stream.next_event()) is not None:
        events.append(event)
    return events


def messages(events: list[StreamEvent]) -> list[bytes]:
    return [e.payload for e in events if isinstance(e, MessageReceived)]


def kinds(frames: list[RelayFrame]) -> list[str | None]:
    return [f.kind for f in frames]


@dataclass
class Pair:
    """An initiator ``a`` (harness side) and an acceptor ``b`` joined by a perfect path,
    plus helpers to intercept frames and move the clock."""

    config: ReliableStreamConfig = field(default_factory=ReliableStreamConfig)
    now: float = 0.0
    a: ReliableStream = field(init=False)
    b: ReliableStream = field(init=False)
    received_a: list[bytes] = field(default_factory=list)
    received_b: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.a = ReliableStream(STREAM_ID, initiator=True, now=self.now, config=self.config)
        self.b = ReliableStream(STREAM_ID, initiator=False, now=self.now, config=self.config)

    def out(self, stream: ReliableStream) -> list[RelayFrame]:
        """Frames ``stream`` emits now, after a round trip through the wire codec."""
        return [decode_frame(encode_frame(f)) for f in stream.frames_to_send(self.now)]

    def peer(self, stream: ReliableStream) -> ReliableStream:
        return self.b if stream is self.a else self.a

    def deliver(self, to: ReliableStream, frames: list[RelayFrame]) -> None:
        for frame in frames:
            to.receive_frame(frame, self.now)
        self.collect()

    def collect(self) -> None:
        self.received_a += messages(take_events(self.a))
        self.received_b += messages(take_events(self.b))

    def flush(self, max_rounds: int = 1000) -> int:
        """Exchange frames without loss until both sides are quiet; return frames moved."""
        moved = 0
        for _ in range(max_rounds):
            from_a, from_b = self.out(self.a), self.out(self.b)
            if not from_a and not from_b:
                return moved
            moved += len(from_a) + len(from_b)
            self.deliver(self.b, from_a)
            self.deliver(self.a, from_b)
        raise AssertionError("endpoints never went quiet")

    def advance(self, dt: float) -> None:
        self.now += dt
        for stream in (self.a, self.b):
            timer = stream.get_timer()
            if timer is not None and timer <= self.now:
                stream.handle_timer(self.now)
        self.collect()

    def settle(self, horizon_s: float = 5.0) -> None:
        """Flush, then follow timers (acks, retransmissions) until ``horizon_s`` passes."""
        end = self.now + horizon_s
        while True:
            self.flush()
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not timers or min(timers) > end:
                return
            self.advance(max(0.0, min(timers) - self.now))

    def open(self) -> None:
        """Negotiate: both ends reach RELIABLE."""
        self.settle(0.1)


def decode_or_none(data: bytes) -> RelayFrame | None:
    try:
        return decode_frame(data)
    except InvalidFrame:
        return None


@dataclass
class LegacyCodexExecutor:
    """Behaves like the Codex 0.133/0.137 remote executor on the relay (codex-observed s.6).

    Creates a virtual connection on the first valid data frame of an unknown stream, ignores
    seq/ack/ack_bits/resume/heartbeat/ack_frame, drops segmented or invalid frames silently,
    executes every data frame it gets (duplicates twice), and answers each request (a
    payload starting with ``req``) with one data frame: ``seq`` from 0, ``ack = ack_bits =
    0``, segment ``0/1``.
    """

    executed: dict[str, list[bytes]] = field(default_factory=dict)
    next_seq: dict[str, int] = field(default_factory=dict)
    outbox: list[bytes] = field(default_factory=list)
    frames_seen: list[RelayFrame] = field(default_factory=list)
    silently_dropped: int = 0

    def receive(self, data: bytes) -> None:
        frame = decode_or_none(data)
        if frame is None:
            self.silently_dropped += 1
            return
        self.frames_seen.append(frame)
        kind = frame.kind
        sid = frame.stream_id
        if kind == "reset":
            self.executed.pop(sid, None)
            self.next_seq.pop(sid, None)
            return
        if kind != "data":
            return
        if frame.data.segment_index != 0 or frame.data.segment_count != 1:
            self.silently_dropped += 1
            return
        self.executed.setdefault(sid, []).append(frame.data.payload)
        if frame.data.payload.startswith(b"req"):
            seq = self.next_seq.get(sid, 0)
            self.next_seq[sid] = (seq + 1) & 0xFFFF_FFFF
            reply = b"resp:" + frame.data.payload
            self.outbox.append(encode_frame(data_frame(sid, seq, reply)))
