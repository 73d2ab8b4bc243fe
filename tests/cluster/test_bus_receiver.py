"""The frame bus's receiving side without NATS: order, credit, losses, delivery tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cluster_support import eventually

from exec_server.rendezvous.cluster.bus_receiver import FrameReceiver
from exec_server.rendezvous.cluster.bus_wire import HEADER, frame_header, grant_text, reset_text
from exec_server.rendezvous.cluster.frame_bus import RemoteFrame
from exec_server.rendezvous.cluster.nats_bus import BusStats
from exec_server.rendezvous.cluster.records import NodeRef
from exec_server.rendezvous.cluster.routing import Direction

WINDOW = 4096


class Router:
    """An inbound handler: takes frames at once unless told to wait."""

    def __init__(self) -> None:
        self.take_now = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.frames: list[RemoteFrame] = []
        self.lost: list[tuple[str, str]] = []
        self.flushed: list[int] = []
        """Frames taken at once so far, at each flush_delivered."""

    def try_deliver(self, frame: RemoteFrame) -> bool:
        if self.take_now:
            self.frames.append(frame)
        return self.take_now

    def flush_delivered(self) -> None:
        self.flushed.append(len(self.frames))

    async def deliver(self, frame: RemoteFrame) -> None:
        await self.gate.wait()
        self.frames.append(frame)

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        self.lost.append((node_id, environment_id))


def make(
    last_in_read: Callable[[], bool] | None = None,
) -> tuple[FrameReceiver, Router, BusStats, list[tuple[str, str]]]:
    router = Router()
    stats = BusStats()
    credit: list[tuple[str, str]] = []

    def send_credit(node_id: str, text: str) -> None:
        credit.append((node_id, text))

    receiver = FrameReceiver("b", router, stats, WINDOW, send_credit, last_in_read)
    return receiver, router, stats, credit


class Msg:
    """What the connection hands the subscription callback (the fields of nats_wire.Msg)."""

    def __init__(self, sender: str, header: str, data: bytes) -> None:
        self.subject = f"exec-server.frames.b.{sender}"
        self.headers = {HEADER: header}
        self.data = data


def frame(seq: int, data: bytes, *, kind: str = "h", generation: int = 1, sender: str = "a") -> Msg:
    return Msg(sender, frame_header("env", kind, f"{sender}-1", generation, seq), data)


async def test_frames_in_order_are_handed_on_with_their_sender_and_granted() -> None:
    receiver, router, stats, credit = make()
    for seq in range(1, 5):
        receiver.on_frame(frame(seq, b"x" * 512, kind="e" if seq % 2 else "h"))
    assert [f.sender for f in router.frames] == [NodeRef("a", "a-1")] * 4
    assert [f.direction for f in router.frames][:2] == [
        Direction.ENVIRONMENT_TO_HARNESS,
        Direction.HARNESS_TO_ENVIRONMENT,
    ]
    # A quarter window consumed: one cumulative grant, at the second frame and the fourth.
    assert credit == [
        ("a", grant_text("env", "a-1", 1, 1024)),
        ("a", grant_text("env", "a-1", 1, 2048)),
    ]
    assert stats.frames_received == 4 and not router.lost


async def test_malformed_messages_and_frames_from_itself_are_dropped() -> None:
    receiver, router, stats, _ = make()
    receiver.on_frame(Msg("a", "env h a-1 1", b"short header"))
    receiver.on_frame(Msg("a", "env q a-1 1 1", b"unknown kind"))
    receiver.on_frame(frame(1, b"from myself", sender="b"))
    assert stats.dropped["malformed"] == 3 and router.frames == [] and not router.lost
    receiver.on_frame(frame(1, b"fine"))  # the channel was not disturbed
    assert [f.data for f in router.frames] == [b"fine"]


async def test_a_gap_breaks_the_channel_and_late_frames_are_stale() -> None:
    receiver, router, stats, credit = make()
    receiver.on_frame(frame(1, b"one"))
    receiver.on_frame(frame(3, b"three"))
    assert router.lost == [("a", "env")] and stats.dropped["gap"] == 1
    assert credit == [("a", reset_text("env", "a-1", 1))]
    receiver.on_frame(frame(4, b"late"))
    assert stats.dropped["stale"] == 1
    receiver.on_frame(frame(1, b"fresh", generation=2))
    assert [f.data for f in router.frames] == [b"one", b"fresh"]


async def test_a_sender_ignoring_its_window_is_cut_off() -> None:
    receiver, router, stats, _ = make()
    router.take_now = False
    router.gate.clear()
    big = b"x" * (1 << 20)  # queued frames share it: no memory to speak of
    seq = 0
    while not router.lost:  # beyond a window and the largest relay frame (64 MiB)
        seq += 1
        receiver.on_frame(frame(seq, big))
        assert seq < 200
    assert stats.dropped["gap"] == 1
    router.gate.set()  # what arrived in order before the loss is still delivered
    await eventually(lambda: len(router.frames) == seq - 1, "the accepted frames delivered")
    assert receiver.close() == []


async def test_waiting_frames_keep_their_order_and_a_closed_receiver_starts_nothing() -> None:
    receiver, router, _, _ = make()
    router.take_now = False
    router.gate.clear()
    receiver.on_frame(frame(1, b"1"))
    router.take_now = True  # the channel has a frame waiting: later frames queue behind it
    receiver.on_frame(frame(2, b"2"))
    assert router.frames == []
    router.gate.set()
    await eventually(lambda: len(router.frames) == 2, "queued frames delivered")
    assert [f.data for f in router.frames] == [b"1", b"2"]

    router.take_now = False
    router.gate.clear()
    receiver.on_frame(frame(1, b"waits", sender="c"))
    pumps = receiver.close()
    assert len(pumps) == 1
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    receiver.on_frame(frame(2, b"after close", sender="c"))
    assert receiver.close() == []


async def test_the_router_writes_out_what_one_read_handed_over() -> None:
    """read_done (the connection's after_read) asks the router to write out the frames
    handed over at once since the last read, and only then."""
    receiver, router, _, _ = make()
    receiver.read_done()
    assert router.flushed == [], "nothing was handed over"
    receiver.on_frame(frame(1, b"one"))
    receiver.on_frame(frame(2, b"two"))
    receiver.read_done()
    assert router.flushed == [2]
    receiver.read_done()
    assert router.flushed == [2], "nothing new"
    router.take_now = False
    router.gate.clear()
    receiver.on_frame(frame(3, b"waits for its task"))
    receiver.read_done()
    assert router.flushed == [2], "queued, not handed over"
    pumps = receiver.close()
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)


async def test_the_last_message_of_a_read_is_written_out_at_once() -> None:
    """When the connection says the message is its read's last, what was handed over
    is written out then (before the credit accounting), not at read_done."""
    last = [False]
    receiver, router, _, _ = make(lambda: last[0])
    receiver.on_frame(frame(1, b"one"))
    assert router.flushed == []
    last[0] = True
    receiver.on_frame(frame(2, b"two"))
    assert router.flushed == [2], "both frames of the read, at the second"
    receiver.read_done()
    assert router.flushed == [2], "nothing left for the read's end"
