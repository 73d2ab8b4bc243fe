"""A remote peer (another node seen as a socket) sends a frame straight to the bus only
when nothing of its own waits before it: not a queued frame, and not the frame its
writer holds while the channel's window is full. Its frames reach the bus in the order
they were given, whatever their sizes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from cluster_support import eventually

from exec_server.rendezvous.cluster.records import NodeRef
from exec_server.rendezvous.cluster.routing import Direction
from exec_server.rendezvous.cluster_router.peers import RemotePeer
from exec_server.rendezvous.router import RouterConfig
from exec_server.rendezvous.socket_peer import _StreamRoute
from exec_server.rendezvous.url_signing import UrlRole


@dataclass
class Channel:
    """A bus channel with ``room`` bytes of window left."""

    room: int
    sent: list[bytes] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    node_id: str = "n2"
    environment_id: str = "env"
    closed: bool = False

    def has_room(self) -> bool:
        return self.room > 0

    def try_send(self, data: bytes, direction: Direction) -> bool:
        if len(data) > self.room:
            return False
        return self.force_send(data, direction)

    def force_send(self, data: bytes, direction: Direction) -> bool:
        assert type(data) is bytes
        self.room -= len(data)
        self.sent.append(data)
        return True

    async def wait_for_room(self) -> None:
        await self.opened.wait()

    def send_control(self, data: bytes) -> bool:
        return True

    def grant(self, room: int) -> None:
        self.room = room
        self.opened.set()


@dataclass
class Bus:
    the_channel: Channel
    connected: bool = True

    def channel(self, node_id: str, environment_id: str) -> Channel:
        return self.the_channel


@pytest.fixture
async def peer_and_channel() -> AsyncIterator[tuple[RemotePeer, Channel]]:
    channel = Channel(room=1500)
    bus = Bus(channel)
    peer = RemotePeer(
        lambda: bus,  # type: ignore[arg-type,return-value]
        RouterConfig(),
        NodeRef("n2", "incarnation"),
        "env",
        UrlRole.HARNESS,
    )
    peer.start()
    await eventually(lambda: peer._idle, "the writer waits for frames")
    try:
        yield peer, channel
    finally:
        await peer.aclose()


async def test_a_frame_waiting_for_credit_is_not_overtaken(
    peer_and_channel: tuple[RemotePeer, Channel],
) -> None:
    peer, channel = peer_and_channel
    first, big, small = b"a" * 1000, b"b" * 800, b"c" * 100
    assert peer.force_enqueue(first)
    assert channel.sent == [first], "straight to the bus"
    assert peer.force_enqueue(big)  # no room for it: queued, its writer waits for credit
    await eventually(lambda: not peer.queued_frames, "the writer holds the big frame")
    assert peer.force_enqueue(small)  # fits the window, but must wait behind the big one
    assert peer.queued_frames == 1
    channel.grant(10_000)
    await eventually(lambda: len(channel.sent) == 3, "the rest is sent")
    assert channel.sent == [first, big, small]


async def test_write_at_once_waits_behind_a_frame_waiting_for_credit(
    peer_and_channel: tuple[RemotePeer, Channel],
) -> None:
    peer, channel = peer_and_channel
    assert peer.force_enqueue(b"b" * 1600)  # above the room left: the writer waits
    await eventually(lambda: not peer.queued_frames, "the writer holds the big frame")
    assert not peer.write_at_once(memoryview(b"c" * 100), None)
    assert channel.sent == [] and peer.queued_frames == 0, "nothing sent or queued"


async def test_write_at_once_copies_a_view_and_counts_the_stream(
    peer_and_channel: tuple[RemotePeer, Channel],
) -> None:
    peer, channel = peer_and_channel
    counted: list[int] = []
    peer.on_sent = lambda _peer, _stream, size: counted.append(size)
    stream = _StreamRoute("s1", "", peer, reliable=False, remote=True)
    buffer = bytearray(b"frame bytes")
    assert peer.write_at_once(memoryview(buffer), stream)
    buffer[:] = b"overwritten"
    assert channel.sent == [b"frame bytes"]
    assert counted == [len(b"frame bytes")]
    assert not peer.write_at_once(b"x" * 2000, None), "no room: nothing sent"
    assert channel.sent == [b"frame bytes"]
    assert peer.queued_frames == 0
