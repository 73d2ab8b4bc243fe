"""The environment's fast paths against the general path, on a hostile simulated path.

An environment multiplexer ``e`` that takes every fast path (``try_send_now`` for new
output, frames framed in place by ``data_to_write``, ``has_output_now`` pruning) runs
next to a twin ``shadow`` that takes none (``send_message``, and ``data_to_write``
framing each frame from a ``RelayFrame`` with the general encoder). Both get the same
inputs at the same times; after every step their wire bytes, events, stream state and
counters must be identical, and everything the harness sent or received arrives
exactly once and in order once the path heals. The path loses, duplicates, reorders
and truncates frames, and reconnects drop what is in flight (as in
``test_reliable_properties``).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_reliable_properties import (
    FATES,
    HEAL_ROUNDS,
    MACHINE_SETTINGS,
    Path,
    check_memory_bounds,
    configs,
)

from exec_server.relay.errors import SendBlocked
from exec_server.relay.events import MessageReceived, PeerMode
from exec_server.relay.frame_encoder import message_with_headroom
from exec_server.relay.mux_output import OutputBatch
from exec_server.relay.reliable_stream import ReliableStream, ReliableStreamConfig
from exec_server.relay.stream_mux import MuxConfig, MuxRole, MuxStream, StreamMux

PICOWS_HEADROOM = 14

# The hostile configurations of test_reliable_properties, with segments that often
# hold a whole message (the fast paths take one-segment messages only).
twin_configs = configs().flatmap(
    lambda config: st.sampled_from([8, 24, 96]).map(
        lambda segment: replace(
            config,
            max_segment_payload_bytes=segment,
            max_unacked_bytes=max(segment, config.max_unacked_bytes),
        )
    )
)


def wire(frames: list[bytes | bytearray | memoryview]) -> list[bytes]:
    """Frames as they go on the wire: a view framed in place is the frame; a bytearray
    starts with ``headroom`` free bytes."""
    return [bytes(f) if type(f) is memoryview else bytes(f[PICOWS_HEADROOM:]) for f in frames]


class GeneralPathBatch(OutputBatch):
    """A writer pass that takes every frame from ``next_frame`` and the general encoder
    (``encode_frame_for_socket``), never ``next_frame_in_place``."""

    def drain(self, stream: MuxStream, now: float) -> None:
        while (frame := stream.next_frame(now)) is not None:
            self.touched.add(stream)
            if not self.add(self.encode(frame)):
                return
        self.pending.discard(stream)


class GeneralPathMux(StreamMux):
    """A multiplexer whose writer passes are :class:`GeneralPathBatch` es."""

    output_batch = GeneralPathBatch


def state(stream: ReliableStream) -> tuple[object, ...]:
    return (
        stream.mode,
        stream.close_reason,
        stream.buffered_send_bytes,
        stream.inflight_bytes,
        stream.unacked_segments,
        stream.undelivered_bytes,
        stream.get_timer(),
        stream.rto_s,
        stream.stats,
    )


class FastPathTwinMachine(RuleBasedStateMachine):
    """Harness mux ``h``; environment mux ``e`` (fast paths) and its twin ``shadow``."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.paths = {"h": Path(), "e": Path()}  # keyed by sender
        self.sent: dict[tuple[str, str], list[bytes]] = {}
        self.received: dict[tuple[str, str], list[bytes]] = {}
        self.counter = 0
        self.fast_sends = 0
        self.in_place = 0

    @initialize(
        config=twin_configs,
        n_streams=st.integers(1, 2),
        negotiate_first=st.sampled_from([True, True, False]),
    )
    def setup(self, config: ReliableStreamConfig, n_streams: int, negotiate_first: bool) -> None:
        mux_config = MuxConfig(max_streams=2, stream=config)
        self.h = StreamMux(MuxRole.HARNESS, mux_config)
        self.e = StreamMux(MuxRole.ENVIRONMENT, mux_config)
        self.shadow = GeneralPathMux(MuxRole.ENVIRONMENT, mux_config)
        self.ids = [f"stream-{i}" for i in range(n_streams)]
        for sid in self.ids:
            self.h.open_stream(self.now, sid)
            for side in "he":
                self.sent[side, sid] = []
                self.received[side, sid] = []
        while negotiate_first and any(s.mode is PeerMode.PROBING for s in self.h.streams.values()):
            for side in "he":
                self.pump(side)
                self.deliver_all(side)

    # -- plumbing --------------------------------------------------------------

    def to_environment(self, data: bytes) -> None:
        self.e.receive_bytes(data, self.now)
        self.shadow.receive_bytes(data, self.now)

    def drain(self) -> None:
        for item in self.h.events():
            if isinstance(item, MessageReceived):
                self.received["e", item.stream_id].append(item.payload)
        fast = list(self.e.events())
        slow = list(self.shadow.events())
        assert fast == slow
        for item in fast:
            if isinstance(item, MessageReceived):
                self.received["h", item.stream_id].append(item.payload)

    def environment_output(self, budget: int | None) -> list[bytes]:
        predicted = self.e.has_output_now(self.now)
        written = self.e.data_to_write(self.now, budget, headroom=PICOWS_HEADROOM)
        self.in_place += sum(type(f) is memoryview for f in written)
        fast = wire(written)
        slow = wire(self.shadow.data_to_write(self.now, budget, headroom=PICOWS_HEADROOM))
        assert fast == slow
        if not predicted:  # never a false "nothing to write"
            assert fast == []
        return fast

    # -- rules -----------------------------------------------------------------

    @rule(
        side=st.sampled_from("he"),
        which=st.integers(0, 1),
        size=st.one_of(st.integers(1, 24), st.integers(1, 96)),
        fast=st.booleans(),
    )
    def send(self, side: str, which: int, size: int, fast: bool) -> None:
        sid = self.ids[which % len(self.ids)]
        mux = self.h if side == "h" else self.e
        stream = mux.streams.get(sid)
        if stream is None:  # the environment has not heard of it yet
            return
        self.counter += 1
        payload = f"{side}{which}:{self.counter}:".encode().ljust(size, b".")
        if len(payload) > stream.config.max_message_bytes:
            return
        if side == "h":
            if stream.can_send(len(payload)):
                self.h.send_message(sid, payload, self.now)
                self.sent["h", sid].append(payload)
            return
        message = message_with_headroom(payload)
        if fast:  # as in the relay adapter: a fast send finds the writer parked, drained
            self.pump("e")
        frame = self.e.try_send_now(sid, message, self.now) if fast else None
        if frame is not None:
            self.fast_sends += 1
            self.shadow.send_message(sid, message_with_headroom(payload), self.now)
            shadow_frames = self.shadow.data_to_write(self.now, headroom=PICOWS_HEADROOM)
            assert wire(shadow_frames) == [bytes(frame)]
            self.paths["e"].frames.append(bytes(frame))
        else:
            try:
                self.e.send_message(sid, message, self.now)
            except SendBlocked:
                try:
                    self.shadow.send_message(sid, message_with_headroom(payload), self.now)
                except SendBlocked:
                    return
                raise AssertionError("only the fast mux refused the message") from None
            self.shadow.send_message(sid, message_with_headroom(payload), self.now)
        self.sent["e", sid].append(payload)

    @rule(side=st.sampled_from("he"), budget=st.sampled_from([None, None, 1, 64]))
    def pump(self, side: str, budget: int | None = None) -> None:
        if side == "h":
            self.paths["h"].frames.extend(self.h.data_to_send(self.now, budget))
        else:
            frames = self.environment_output(budget)
            self.paths["e"].frames.extend(frames)

    @rule(side=st.sampled_from("he"), index=st.integers(0, 1000), fate=FATES)
    def path_event(self, side: str, index: int, fate: str) -> None:
        data = self.paths[side].suffer(index, fate)
        if data is not None:
            self.deliver(side, data)

    def deliver(self, side: str, data: bytes) -> None:
        if side == "h":
            self.to_environment(data)
        else:
            self.h.receive_bytes(data, self.now)

    @rule(side=st.sampled_from("he"))
    def deliver_all(self, side: str) -> None:
        frames, self.paths[side].frames = self.paths[side].frames, []
        for data in frames:
            self.deliver(side, data)

    @rule(dt=st.sampled_from([0.001, 0.05, 0.3, 1.0, 4.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for mux in (self.h, self.e, self.shadow):
            mux.handle_timer(self.now)

    @rule(side=st.sampled_from("he"))
    def reconnect(self, side: str) -> None:
        for path in self.paths.values():
            path.frames.clear()
        muxes = [self.h] if side == "h" else [self.e, self.shadow]
        for mux in muxes:
            mux.connection_lost(self.now)
            mux.on_reconnect(self.now)

    @rule()
    def read(self) -> None:
        self.drain()

    # -- invariants ------------------------------------------------------------

    @invariant()
    def twins_agree(self) -> None:
        if not hasattr(self, "e"):
            return
        assert self.e.streams.keys() == self.shadow.streams.keys()
        for sid, stream in self.e.streams.items():
            twin = self.shadow.streams[sid]
            assert isinstance(stream, ReliableStream) and isinstance(twin, ReliableStream)
            assert state(stream) == state(twin)
            check_memory_bounds(stream)
        assert self.e.dropped == self.shadow.dropped

    @invariant()
    def exactly_once_in_order_so_far(self) -> None:
        for key, got in self.received.items():
            assert got == self.sent[key][: len(got)], key

    def teardown(self) -> None:
        if not hasattr(self, "e"):
            return
        for _ in range(HEAL_ROUNDS):
            self.drain()
            if self.received == self.sent and all(
                s.buffered_send_bytes == 0 for m in (self.h, self.e) for s in m.streams.values()
            ):
                event(f"fast sends: {min(self.fast_sends, 5)}+")
                event(f"frames framed in place: {min(self.in_place, 5)}+")
                return
            moved = False
            for side in "he":
                self.pump(side)
                frames, self.paths[side].frames = self.paths[side].frames, []
                for data in frames:
                    self.deliver(side, data)
                    moved = True
            if not moved:
                timers = [t for m in (self.h, self.e) if (t := m.get_timer()) is not None]
                assert timers, "stuck with no timer"
                self.now = max(self.now, min(timers))
                for mux in (self.h, self.e, self.shadow):
                    mux.handle_timer(self.now)
            self.twins_agree()
        raise AssertionError(f"not delivered after healing: {self.sent} vs {self.received}")


TestFastPathTwins = FastPathTwinMachine.TestCase
TestFastPathTwins.settings = MACHINE_SETTINGS
