"""Property tests: two of our endpoints across a hostile simulated path.

The path loses, duplicates, reorders and truncates frames, and a physical reconnect drops
everything in flight; time only moves when the test says so. Whatever happens, once the
path heals every message is delivered exactly once and in order, no stream is reset, and
buffers never exceed the configured limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from relay_sim import STREAM_ID, decode_or_none

from exec_server.relay.events import MessageReceived, PeerMode
from exec_server.relay.frame_codec import encode_frame
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig
from exec_server.relay.stream_config import MAX_WINDOW_SEGMENTS, SEQ_SPACE
from exec_server.relay.stream_mux import MuxConfig, MuxRole, StreamMux

MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HEAL_ROUNDS = 3000
FATES = st.sampled_from(["deliver", "deliver", "deliver", "duplicate", "lose", "truncate"])


@st.composite
def configs(draw: st.DrawFn) -> ReliableStreamConfig:
    segment = draw(st.sampled_from([3, 8, 16]))
    return ReliableStreamConfig(
        max_segment_payload_bytes=segment,
        max_message_bytes=96,
        max_unacked_segments=draw(st.sampled_from([1, 2, 8, 48])),
        # Up to 48 small segments in flight: past the 32 that ack_bits can name.
        max_unacked_bytes=segment * draw(st.sampled_from([1, 2, 6, 48])),
        max_send_buffer_bytes=draw(st.sampled_from([64, 256])),
        max_reorder_bytes=draw(st.sampled_from([segment, 48, 256])),
        max_receive_buffer_bytes=draw(st.sampled_from([1, 40, 400])),
        ack_delay_s=draw(st.sampled_from([0.0, 0.01, 0.2])),
        ack_every_segments=draw(st.integers(1, 8)),
        initial_rto_s=0.3,
        min_rto_s=0.05,
        max_rto_s=2.0,
        heartbeat_interval_s=3.0,
        idle_timeout_s=1e9,  # the path may be dead for any simulated time
        negotiation_timeout_s=1e9,
        initial_seq=draw(st.sampled_from([1, 1, SEQ_SPACE - 12])),
    )


def report_coverage(streams: list[ReliableStream]) -> None:
    """Label the example with what the machinery did (``--hypothesis-show-statistics``)."""
    for name in ("retransmissions", "duplicates_received", "resumes_sent", "rto_expiries"):
        if any(getattr(s.stats, name) for s in streams):
            event(name)
    for reason in {r for s in streams for r in s.stats.dropped}:
        event(f"dropped:{reason}")


def note_buffers(stream: ReliableStream, seen: set[str]) -> None:
    if stream.reorder_buffer_segments:
        seen.add("reorder buffer used")
    if stream.reassembly_bytes:
        seen.add("reassembly in progress")
    if stream.unacked_segments == stream.config.max_unacked_segments:
        seen.add("send window full")


def check_memory_bounds(stream: ReliableStream) -> None:
    cfg = stream.config
    assert stream.buffered_send_bytes <= max(cfg.max_send_buffer_bytes, cfg.max_message_bytes)
    assert stream.unacked_segments <= cfg.max_unacked_segments
    assert stream.inflight_bytes <= cfg.max_unacked_bytes
    assert stream.reorder_buffer_segments < MAX_WINDOW_SEGMENTS
    assert stream.reorder_buffer_bytes <= cfg.max_reorder_bytes
    assert stream.reassembly_bytes <= cfg.max_message_bytes
    assert stream.undelivered_bytes <= (
        cfg.max_receive_buffer_bytes + cfg.max_message_bytes + cfg.max_reorder_bytes
    )


@dataclass
class Path:
    """Frames in flight in one direction, as bytes; any of them may be picked next."""

    frames: list[bytes] = field(default_factory=list)

    def pick(self, index: int) -> int:
        return index % len(self.frames)

    def suffer(self, index: int, fate: str, keep: tuple[int, int] = (1, 2)) -> bytes | None:
        """One frame in flight (any of them: reordering) meets ``fate``: the frame to
        deliver is taken off and returned; otherwise it is duplicated, lost or truncated
        to ``keep[0] / keep[1]`` of its length (None). Nothing in flight: None."""
        if not self.frames:
            return None
        i = self.pick(index)
        if fate == "deliver":
            return self.frames.pop(i)
        if fate == "duplicate":
            self.frames.append(self.frames[i])
        elif fate == "lose":
            self.frames.pop(i)
        else:
            self.frames[i] = self.frames[i][: len(self.frames[i]) * keep[0] // keep[1]]
        return None


class StreamPairMachine(RuleBasedStateMachine):
    """One initiator stream ``a`` and one acceptor stream ``b`` on a lossy path."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.paths = {"a": Path(), "b": Path()}  # keyed by sender
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.received: dict[str, list[bytes]] = {"a": [], "b": []}  # keyed by sender
        self.counter = 0

    @initialize(config=configs(), negotiate_first=st.booleans())
    def setup(self, config: ReliableStreamConfig, negotiate_first: bool) -> None:
        """Half the runs negotiate under fire; the others start from a clean negotiation."""
        self.config = config
        self.seen: set[str] = set()
        self.streams = {
            "a": ReliableStream(STREAM_ID, initiator=True, now=self.now, config=config),
            "b": ReliableStream(STREAM_ID, initiator=False, now=self.now, config=config),
        }
        while negotiate_first and self.streams["a"].mode is PeerMode.PROBING:
            for side in "ab":
                self.pump(side)
                self.deliver_all(side)

    @staticmethod
    def other(side: str) -> str:
        return "b" if side == "a" else "a"

    def drain(self, side: str) -> None:
        stream = self.streams[side]
        while (item := stream.next_event()) is not None:
            if isinstance(item, MessageReceived):
                self.received[self.other(side)].append(item.payload)

    def deliver_bytes(self, to: str, data: bytes) -> None:
        frame = decode_or_none(data)
        if frame is not None:
            self.streams[to].receive_frame(frame, self.now)

    # -- rules ---------------------------------------------------------------

    @rule(side=st.sampled_from("ab"), size=st.integers(1, 96))
    def send(self, side: str, size: int) -> None:
        stream = self.streams[side]
        self.counter += 1
        head = f"{side}{self.counter}:".encode()
        payload = (head + bytes([self.counter % 251]) * size)[: max(size, len(head))]
        if len(payload) > stream.config.max_message_bytes or not stream.can_send(len(payload)):
            return
        stream.send_message(payload, self.now)
        self.sent[side].append(payload)

    @rule(side=st.sampled_from("ab"))
    def pump(self, side: str) -> None:
        frames = self.streams[side].frames_to_send(self.now)
        self.paths[side].frames.extend(encode_frame(f) for f in frames)

    @rule(side=st.sampled_from("ab"), index=st.integers(0, 1000), fate=FATES)
    def path_event(self, side: str, index: int, fate: str) -> None:
        """One frame in flight (any of them: reordering) is delivered, duplicated, lost or
        truncated."""
        data = self.paths[side].suffer(index, fate, keep=(2, 3))
        if data is not None:
            self.deliver_bytes(self.other(side), data)

    @rule(side=st.sampled_from("ab"))
    def deliver_all(self, side: str) -> None:
        """A calm moment: everything in flight arrives, in order."""
        frames, self.paths[side].frames = self.paths[side].frames, []
        for data in frames:
            self.deliver_bytes(self.other(side), data)

    @rule(dt=st.sampled_from([0.001, 0.01, 0.05, 0.3, 1.0, 4.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for stream in self.streams.values():
            timer = stream.get_timer()
            if timer is not None and timer <= self.now:
                stream.handle_timer(self.now)

    @rule(side=st.sampled_from("ab"))
    def reconnect(self, side: str) -> None:
        for path in self.paths.values():
            path.frames.clear()
        stream = self.streams[side]
        stream.connection_lost(self.now)
        stream.on_reconnect(self.now)

    @rule(side=st.sampled_from("ab"))
    def read(self, side: str) -> None:
        self.drain(side)

    # -- invariants -----------------------------------------------------------

    @invariant()
    def exactly_once_in_order_so_far(self) -> None:
        for side in "ab":
            got = self.received[side]
            assert got == self.sent[side][: len(got)]

    @invariant()
    def never_reset(self) -> None:
        for stream in self.streams.values():
            assert not stream.is_closed, stream.close_reason

    @invariant()
    def memory_bounded(self) -> None:
        for stream in self.streams.values():
            check_memory_bounds(stream)
            note_buffers(stream, self.seen)

    def teardown(self) -> None:
        if not hasattr(self, "streams"):
            return
        for _ in range(HEAL_ROUNDS):
            self.drain("a")
            self.drain("b")
            if self.received == self.sent and all(
                s.buffered_send_bytes == 0 for s in self.streams.values()
            ):
                report_coverage(list(self.streams.values()))
                for label in self.seen:
                    event(label)
                if any(len(m) > self.config.max_segment_payload_bytes for m in self.sent["a"]):
                    event("segmented")
                return
            moved = False
            for side in "ab":
                self.pump(side)
                frames, self.paths[side].frames = self.paths[side].frames, []
                for data in frames:
                    self.deliver_bytes(self.other(side), data)
                    moved = True
            if not moved:
                timers = [t for s in self.streams.values() if (t := s.get_timer()) is not None]
                assert timers, "stuck with no timer"
                self.now = max(self.now, min(timers))
                for stream in self.streams.values():
                    stream.handle_timer(self.now)
            self.never_reset()
            self.memory_bounded()
        raise AssertionError(
            f"not delivered after healing: sent={self.sent} received={self.received}"
        )


TestStreamPair = StreamPairMachine.TestCase
TestStreamPair.settings = MACHINE_SETTINGS


class MuxPairMachine(RuleBasedStateMachine):
    """A harness mux with several streams and an environment mux that creates them lazily;
    the same hostile path, now shared by all streams of the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.paths = {"h": Path(), "e": Path()}
        self.sent: dict[tuple[str, str], list[bytes]] = {}
        self.received: dict[tuple[str, str], list[bytes]] = {}
        self.counter = 0

    @initialize(config=configs(), n_streams=st.integers(1, 3), negotiate_first=st.booleans())
    def setup(self, config: ReliableStreamConfig, n_streams: int, negotiate_first: bool) -> None:
        mux_config = MuxConfig(max_streams=3, stream=config)
        self.muxes = {
            "h": StreamMux(MuxRole.HARNESS, mux_config),
            "e": StreamMux(MuxRole.ENVIRONMENT, mux_config),
        }
        self.ids = [f"stream-{i}" for i in range(n_streams)]
        for sid in self.ids:
            self.muxes["h"].open_stream(self.now, sid)
            for side in "he":
                self.sent[side, sid] = []
                self.received[side, sid] = []
        harness_streams = self.muxes["h"].streams.values()
        while negotiate_first and any(s.mode is PeerMode.PROBING for s in harness_streams):
            for side in "he":
                self.pump(side, None)
                self.deliver_all(side)

    @staticmethod
    def other(side: str) -> str:
        return "e" if side == "h" else "h"

    def drain(self, side: str) -> None:
        for item in self.muxes[side].events():
            if isinstance(item, MessageReceived):
                self.received[self.other(side), item.stream_id].append(item.payload)

    def deliver_bytes(self, side: str, data: bytes) -> None:
        self.muxes[self.other(side)].receive_bytes(data, self.now)

    @rule(side=st.sampled_from("he"), which=st.integers(0, 2), size=st.integers(1, 96))
    def send(self, side: str, which: int, size: int) -> None:
        sid = self.ids[which % len(self.ids)]
        stream = self.muxes[side].streams.get(sid)
        if stream is None:  # the environment has not heard of it yet
            return
        self.counter += 1
        payload = f"{side}{sid}{self.counter}:".encode().ljust(size, b".")
        if len(payload) > stream.config.max_message_bytes or not stream.can_send(len(payload)):
            return
        self.muxes[side].send_message(sid, payload, self.now)
        self.sent[side, sid].append(payload)

    @rule(side=st.sampled_from("he"), budget=st.sampled_from([None, 1, 64]))
    def pump(self, side: str, budget: int | None) -> None:
        self.paths[side].frames.extend(self.muxes[side].data_to_send(self.now, budget))

    @rule(
        side=st.sampled_from("he"),
        index=st.integers(0, 1000),
        fate=FATES,
    )
    def path_event(self, side: str, index: int, fate: str) -> None:
        data = self.paths[side].suffer(index, fate)
        if data is not None:
            self.deliver_bytes(side, data)

    @rule(side=st.sampled_from("he"))
    def deliver_all(self, side: str) -> None:
        frames, self.paths[side].frames = self.paths[side].frames, []
        for data in frames:
            self.deliver_bytes(side, data)

    @rule(dt=st.sampled_from([0.001, 0.05, 0.3, 1.0, 4.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for mux in self.muxes.values():
            mux.handle_timer(self.now)

    @rule(side=st.sampled_from("he"))
    def reconnect(self, side: str) -> None:
        for path in self.paths.values():
            path.frames.clear()
        self.muxes[side].connection_lost(self.now)
        self.muxes[side].on_reconnect(self.now)

    @rule(side=st.sampled_from("he"))
    def read(self, side: str) -> None:
        self.drain(side)

    @invariant()
    def exactly_once_in_order_so_far(self) -> None:
        for key, got in self.received.items():
            assert got == self.sent[key][: len(got)], key

    @invariant()
    def streams_stay_up_and_bounded(self) -> None:
        for mux in self.muxes.values():
            assert len(mux.streams) <= mux.config.max_streams
            for stream in mux.streams.values():
                assert not stream.is_closed, stream.close_reason
                check_memory_bounds(stream)

    def teardown(self) -> None:
        if not hasattr(self, "muxes"):
            return
        for _ in range(HEAL_ROUNDS):
            self.drain("h")
            self.drain("e")
            if self.received == self.sent and all(
                s.buffered_send_bytes == 0 for m in self.muxes.values() for s in m.streams.values()
            ):
                report_coverage([s for m in self.muxes.values() for s in m.streams.values()])
                return
            moved = False
            for side in "he":
                self.pump(side, None)
                frames, self.paths[side].frames = self.paths[side].frames, []
                for data in frames:
                    self.deliver_bytes(side, data)
                    moved = True
            if not moved:
                timers = [t for m in self.muxes.values() if (t := m.get_timer()) is not None]
                assert timers, "stuck with no timer"
                self.now = max(self.now, min(timers))
                for mux in self.muxes.values():
                    mux.handle_timer(self.now)
            self.streams_stay_up_and_bounded()
        raise AssertionError(f"not delivered after healing: {self.sent} vs {self.received}")


TestMuxPair = MuxPairMachine.TestCase
TestMuxPair.settings = MACHINE_SETTINGS
