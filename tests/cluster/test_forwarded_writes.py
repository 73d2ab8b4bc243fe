"""Frames another node forwards are written to the local socket at the end of the
bus's read (``flush_delivered``), not at the end of the loop iteration: one system call
for the frames of one read, and no loop turn before the first of them leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cluster_support import eventually

from exec_server.relay.frame_codec import data_frame, encode_frame
from exec_server.rendezvous.cluster.frame_bus import RemoteFrame
from exec_server.rendezvous.cluster.records import NodeRef
from exec_server.rendezvous.cluster.routing import Direction
from exec_server.rendezvous.cluster.state import LocalClusterState
from exec_server.rendezvous.cluster_router import ClusterRouter
from exec_server.rendezvous.router import SocketPeer
from exec_server.rendezvous.socket_peer import _StreamRoute
from exec_server.rendezvous.url_signing import UrlRole

ENV = "env-writes"
HARNESS_NODE = NodeRef("n2", "n2-incarnation")


class GatheringSink:
    """A websocket that gathers what is written now until it is flushed (as the relay
    socket's frame writer does)."""

    def __init__(self) -> None:
        self.gathered: list[bytes] = []
        self.written: list[bytes] = []

    def write_now(self, data: bytes | memoryview | str) -> bool:
        assert not isinstance(data, str)
        self.gathered.append(bytes(data))
        return True

    def flush(self) -> None:
        self.written += self.gathered
        self.gathered = []

    async def send_bytes(self, data: bytes) -> None:
        self.written.append(data)

    async def send_str(self, data: str) -> None:
        raise AssertionError("no control text expected")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


@pytest.fixture
async def node() -> AsyncIterator[tuple[ClusterRouter, SocketPeer, GatheringSink]]:
    router = ClusterRouter(None, LocalClusterState())
    sink = GatheringSink()
    environment = router.new_peer(sink, UrlRole.ENVIRONMENT, ENV, "environment-nonce")
    assert await router.claim(environment) is None
    router.attach(environment)
    harnesses = router._remote_peer(HARNESS_NODE, ENV, UrlRole.HARNESS)
    route = router._routes[ENV]
    route.streams["s1"] = _StreamRoute("s1", "", harnesses, False, remote=True)
    harnesses.owned.add("s1")
    await eventually(lambda: environment._idle, "the socket's writer waits")
    try:
        yield router, environment, sink
    finally:
        router.detach(environment)
        await environment.aclose()
        await router.aclose()


def forwarded(seq: int, sender: NodeRef = HARNESS_NODE) -> RemoteFrame:
    data = encode_frame(data_frame("s1", seq, b"payload %d" % seq))
    return RemoteFrame(sender, ENV, Direction.HARNESS_TO_ENVIRONMENT, data)


async def test_the_frames_of_one_read_are_written_at_its_end(
    node: tuple[ClusterRouter, SocketPeer, GatheringSink],
) -> None:
    router, _, sink = node
    frames = [forwarded(seq) for seq in range(3)]
    assert all(router.try_deliver(frame) for frame in frames)
    assert sink.gathered == [frame.data for frame in frames] and sink.written == []
    router.flush_delivered()
    assert sink.written == [frame.data for frame in frames] and sink.gathered == []
    router.flush_delivered()
    assert len(sink.written) == 3
    assert not router.try_deliver(forwarded(3, NodeRef("n3", "other"))), "not the owner"
    router.flush_delivered()
    assert len(sink.written) == 3 and not sink.gathered


class FailingFlushSink(GatheringSink):
    """A socket whose write fails when its gathered frames are written out."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        raise OSError("the socket broke while writing")


async def test_a_socket_whose_write_fails_does_not_keep_the_others_waiting(
    node: tuple[ClusterRouter, SocketPeer, GatheringSink], caplog: pytest.LogCaptureFixture
) -> None:
    """One socket's failing flush is logged; the other sockets of the read are written
    out all the same, and the failed one is not flushed again at every later read."""
    router, _, sink = node
    failing = FailingFlushSink()
    other_env = "env-writes-2"
    broken = router.new_peer(failing, UrlRole.ENVIRONMENT, other_env, "environment-nonce")
    assert await router.claim(broken) is None
    router.attach(broken)
    harnesses = router._remote_peer(HARNESS_NODE, other_env, UrlRole.HARNESS)
    router._routes[other_env].streams["s1"] = _StreamRoute("s1", "", harnesses, False, remote=True)
    harnesses.owned.add("s1")
    await eventually(lambda: broken._idle, "the socket's writer waits")
    try:
        to_broken = forwarded(0)
        to_broken = RemoteFrame(HARNESS_NODE, other_env, to_broken.direction, to_broken.data)
        assert router.try_deliver(to_broken)  # first in the read
        frame = forwarded(0)
        assert router.try_deliver(frame)
        router.flush_delivered()
        assert sink.written == [frame.data], "the other socket is written out"
        assert "writing out the forwarded frames failed" in caplog.text
        assert "the socket broke" in caplog.text
        router.flush_delivered()
        assert failing.flushes == 1, "not flushed again: nothing was delivered to it since"
    finally:
        router.detach(broken)
        await broken.aclose()
