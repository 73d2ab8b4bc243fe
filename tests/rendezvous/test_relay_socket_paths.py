"""The relay sockets' routed frame paths (frames routed from the read callback), fed
frames directly and written to real socket pairs: harness frames that must wait for
room at the environment keep their order, nothing is routed once a close is sent, and a
router whose harness rules are its own gets every harness frame through them."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from rendezvous_support import client_frame, feed, server_frame

from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.rendezvous.relay_socket import RelaySocket
from exec_server.rendezvous.router import Router, RouterConfig, SocketPeer
from exec_server.rendezvous.url_signing import UrlRole
from exec_server.transport.websocket import KeepaliveConfig

WAIT_S = 10.0
ENV = "env-paths"
FLAG = RELIABLE_CAPABILITY_BIT


class Side:
    """One relay socket, served by a router, whose written frames are read back."""

    def __init__(self, sock: RelaySocket, far: socket.socket) -> None:
        self.sock = sock
        self.far = far
        self.peer: SocketPeer | None = None
        self.task: asyncio.Task[object] | None = None
        self.control: list[tuple[int, bytes]] = []
        """Control frames written to this socket (first header byte, payload)."""
        self._buffer = b""

    def send(self, payload: bytes) -> None:
        """A frame from the remote peer, as the transport hands its bytes over."""
        feed(self.sock, client_frame(payload))

    async def frames(self, count: int) -> list[bytes]:
        """The next ``count`` data frames written to this socket (payloads)."""
        loop = asyncio.get_running_loop()
        out: list[bytes] = []
        async with asyncio.timeout(WAIT_S):
            while len(out) < count:
                parsed = server_frame(self._buffer)
                if parsed is not None:
                    first, payload, self._buffer = parsed
                    if first & 0x08:
                        self.control.append((first, payload))
                    else:
                        out.append(payload)
                    continue
                self._buffer += await loop.sock_recv(self.far, 1 << 20)
        return out

    async def next_control(self) -> tuple[int, bytes]:
        """The next control frame written to this socket (data frames before it are
        dropped)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(WAIT_S):
            while not self.control:
                parsed = server_frame(self._buffer)
                if parsed is None:
                    self._buffer += await loop.sock_recv(self.far, 1 << 20)
                    continue
                first, payload, self._buffer = parsed
                if first & 0x08:
                    self.control.append((first, payload))
        return self.control.pop(0)


@pytest.fixture
async def sockets() -> AsyncIterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


async def serve(router: Router, role: UrlRole, opened: list[socket.socket]) -> Side:
    ours, theirs = socket.socketpair()
    opened += [ours, theirs]
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    sock = RelaySocket(role, ENV, False, 1 << 20, lambda s: None)
    await loop.connect_accepted_socket(lambda: sock, ours)
    side = Side(sock, theirs)
    peer = side.peer = router.new_peer(sock, role, ENV, f"nonce-{role.value}")
    router.attach(peer)
    side.task = asyncio.create_task(
        sock.serve(
            peer,
            router.on_environment_message,
            router.on_harness_message,
            KeepaliveConfig(),
            router.harness_message_now,
        )
    )
    await asyncio.sleep(0)  # the socket's task reaches its wait: frames now go straight in
    return side


async def stop(*sides: Side) -> None:
    for side in sides:
        assert side.task is not None
        side.task.cancel()
        await asyncio.gather(side.task, return_exceptions=True)
        transport = side.sock._transport
        assert transport is not None
        transport.abort()
        await side.sock._disconnected.wait()
        assert side.peer is not None
        await side.peer.aclose()


def frame(stream_id: str, seq: int, size: int = 10) -> bytes:
    return encode_frame(data_frame(stream_id, seq, bytes([seq % 251]) * size, ack_bits=FLAG))


async def test_harness_frames_that_wait_for_room_keep_their_order(
    sockets: list[socket.socket],
) -> None:
    router = Router(RouterConfig(max_queue_frames=3))
    environment = await serve(router, UrlRole.ENVIRONMENT, sockets)
    harness = await serve(router, UrlRole.HARNESS, sockets)
    stream_id = str(uuid.uuid4())
    # The environment's transport is full: its frames queue at the router (3 at most),
    # the harness' next frames wait in the socket's inbox, which then reads on in order.
    environment.sock.pause_writing()
    sent = [frame(stream_id, seq) for seq in range(12)]
    for payload in sent[:6]:
        harness.send(payload)
    assert harness.sock._inbox, "frames over the environment's bound wait in the inbox"
    # Room appears before the socket's task has run: later frames must still queue
    # behind the waiting ones.
    assert environment.peer is not None
    environment.peer.max_queue_frames = 100
    for payload in sent[6:]:
        harness.send(payload)
    environment.sock.resume_writing()
    assert await environment.frames(len(sent)) == sent
    # Once the inbox is empty, frames go straight in again.
    await asyncio.sleep(0)
    assert harness.sock._route_bytes is not None
    harness.send(frame(stream_id, 99))
    assert await environment.frames(1) == [frame(stream_id, 99)]
    await stop(environment, harness)


async def test_environment_frames_go_to_their_harness_from_the_read_callback(
    sockets: list[socket.socket],
) -> None:
    router = Router()
    environment = await serve(router, UrlRole.ENVIRONMENT, sockets)
    harness = await serve(router, UrlRole.HARNESS, sockets)
    stream_id = str(uuid.uuid4())
    harness.send(frame(stream_id, 0))
    assert await environment.frames(1) == [frame(stream_id, 0)]
    large = frame(stream_id, 1, 300_000)
    environment.send(large)
    # Written during the callback: no loop iteration was needed.
    assert harness.sock._frames is not None and not harness.sock._frames.gathered_bytes
    assert [decode_frame(f) for f in await harness.frames(1)] == [decode_frame(large)]
    await stop(environment, harness)


async def test_nothing_is_routed_once_a_close_is_sent(sockets: list[socket.socket]) -> None:
    router = Router()
    environment = await serve(router, UrlRole.ENVIRONMENT, sockets)
    harness = await serve(router, UrlRole.HARNESS, sockets)
    stream_id = str(uuid.uuid4())
    harness.send(frame(stream_id, 0))
    assert await environment.frames(1) == [frame(stream_id, 0)]
    before = dict(router.stats.frames_routed)
    environment.sock._send_close(1000, b"bye")
    harness.sock._send_close(1000, b"bye")
    environment.send(frame(stream_id, 1, 100_000))
    harness.send(frame(stream_id, 2))
    await asyncio.sleep(0.05)
    assert dict(router.stats.frames_routed) == before
    for side in (environment, harness):
        assert await side.next_control() == (0x88, (1000).to_bytes(2, "big") + b"bye")
        assert side.sock.close_code == 1000
    await stop(environment, harness)


async def test_a_router_with_its_own_harness_rules_gets_every_harness_frame(
    sockets: list[socket.socket],
) -> None:
    seen: list[bytes] = []

    class Watching(Router):
        async def on_harness_message(self, peer: SocketPeer, data: bytes) -> None:
            seen.append(data)
            await super().on_harness_message(peer, data)

    router = Watching()
    assert router.harness_message_now is None
    assert Router().harness_message_now is not None
    environment = await serve(router, UrlRole.ENVIRONMENT, sockets)
    harness = await serve(router, UrlRole.HARNESS, sockets)
    stream_id = str(uuid.uuid4())
    sent = [frame(stream_id, seq) for seq in range(3)]
    for payload in sent:
        harness.send(payload)
    assert await environment.frames(3) == sent
    assert seen == sent
    await stop(environment, harness)


async def test_a_peer_that_drips_one_frame_is_silent_for_the_keepalive(
    sockets: list[socket.socket],
) -> None:
    """The keepalive counts whole frames: a peer sending a frame a byte at a time, and
    never finishing it, is dropped after ``pong_timeout_s`` (it holds the frame's
    buffer until then), as one that sends nothing is. Reads alone do not count."""
    ours, theirs = socket.socketpair()
    sockets += [ours, theirs]
    loop = asyncio.get_running_loop()
    sock = RelaySocket(UrlRole.ENVIRONMENT, ENV, False, 1 << 20, lambda s: None)
    await loop.connect_accepted_socket(lambda: sock, ours)
    router = Router(RouterConfig())
    peer = router.new_peer(sock, UrlRole.ENVIRONMENT, ENV, "nonce-drip")
    router.attach(peer)
    served = asyncio.create_task(
        sock.serve(
            peer,
            router.on_environment_message,
            router.on_harness_message,
            KeepaliveConfig(ping_interval_s=0.05, pong_timeout_s=0.4),
        )
    )
    drip = client_frame(b"x" * 60_000)
    theirs.setblocking(False)
    try:
        async with asyncio.timeout(WAIT_S):
            for byte in drip[:-1]:  # one byte short of the whole frame
                if served.done():
                    break
                theirs.send(bytes((byte,)))
                await asyncio.sleep(0.02)
            result = await served
    finally:
        served.cancel()
        theirs.close()  # the peer goes: the socket's close need not wait for its reply
        await peer.aclose()
    assert result == "pong_timeout"
    assert sock.keepalive is not None and sock.keepalive.heard_count == 0
