"""A cluster node routes a harness frame from the socket's read callback
(:attr:`ClusterRouter.harness_message_now`) only when the frame would not wait: its
stream is already this socket's and the environment's socket has room. Everything else
(a claim, a stream another socket owns, a full environment queue) is left untouched for
the socket's task, which keeps the frames in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from cluster_support import eventually

from exec_server.relay.frame_codec import data_frame, encode_frame
from exec_server.rendezvous.cluster.state import LocalClusterState
from exec_server.rendezvous.cluster_router import ClusterRouter
from exec_server.rendezvous.errors import SocketProtocolError
from exec_server.rendezvous.router import RouterConfig, SocketPeer
from exec_server.rendezvous.url_signing import UrlRole

ENV = "env-now"


@dataclass
class Sink:
    """A websocket the router writes to; ``gate`` cleared holds its writer."""

    frames: list[bytes | str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def send_bytes(self, data: bytes) -> None:
        await self.gate.wait()
        self.frames.append(data)

    async def send_str(self, data: str) -> None:
        await self.gate.wait()
        self.frames.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


@dataclass
class Node:
    router: ClusterRouter
    environment: SocketPeer
    environment_sink: Sink
    harness: SocketPeer
    now: Callable[[SocketPeer, bytes], bool]

    def harness_socket(self, nonce: str) -> SocketPeer:
        peer = self.router.new_peer(Sink(), UrlRole.HARNESS, ENV, nonce)
        self.router.attach(peer)
        return peer


def frame(stream_id: str, seq: int) -> bytes:
    return encode_frame(data_frame(stream_id, seq, b"x%d" % seq))


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    router = ClusterRouter(RouterConfig(max_queue_frames=4), LocalClusterState())
    sink = Sink()
    environment = router.new_peer(sink, UrlRole.ENVIRONMENT, ENV, "environment-nonce")
    assert await router.claim(environment) is None
    router.attach(environment)
    harness = router.new_peer(Sink(), UrlRole.HARNESS, ENV, "harness-nonce")
    router.attach(harness)
    now = router.harness_message_now
    assert now is not None, "a cluster node routes harness frames from the read callback"
    try:
        yield Node(router, environment, sink, harness, now)
    finally:
        for peer in (harness, environment):
            router.detach(peer)
            await peer.aclose()
        await router.aclose()


async def test_the_first_frame_of_a_stream_goes_through_the_claim(node: Node) -> None:
    first = frame("s1", 0)
    assert node.now(node.harness, first) is False
    assert node.router.state.stream_owner(ENV, "s1") is None, "nothing done for it"
    assert not node.router.stats.frames_routed
    await node.router.on_harness_message(node.harness, first)  # the socket's task
    assert node.router.state.stream_owner(ENV, "s1") is not None
    following = [frame("s1", seq) for seq in (1, 2)]
    assert all(node.now(node.harness, data) for data in following)
    await eventually(lambda: len(node.environment_sink.frames) == 3, "all three arrive")
    assert node.environment_sink.frames == [first, *following]


async def test_a_stream_another_socket_owns_is_left_to_the_task(node: Node) -> None:
    await node.router.on_harness_message(node.harness, frame("s1", 0))
    other = node.harness_socket("other-nonce")
    try:
        assert node.now(other, frame("s1", 1)) is False
        await eventually(lambda: len(node.environment_sink.frames) == 1, "the first arrives")
        assert node.environment_sink.frames == [frame("s1", 0)]
    finally:
        node.router.detach(other)
        await other.aclose()


async def test_no_room_at_the_environment_leaves_the_frame_to_the_task(node: Node) -> None:
    await node.router.on_harness_message(node.harness, frame("s1", 0))
    await eventually(lambda: len(node.environment_sink.frames) == 1, "the first arrives")
    node.environment_sink.gate.clear()
    seq = 1
    while node.environment.has_room():
        assert node.now(node.harness, frame("s1", seq)) is True
        seq += 1
    queued = node.environment.queued_frames
    assert node.now(node.harness, frame("s1", seq)) is False
    assert node.environment.queued_frames == queued, "nothing queued past the bound"
    node.environment_sink.gate.set()
    await node.router.on_harness_message(node.harness, frame("s1", seq))  # waits for room
    await eventually(lambda: len(node.environment_sink.frames) == seq + 1, "all arrive")
    assert node.environment_sink.frames == [frame("s1", n) for n in range(seq + 1)]


async def test_an_invalid_frame_is_a_protocol_error(node: Node) -> None:
    with pytest.raises(SocketProtocolError):
        node.now(node.harness, b"\xff not a relay frame")
