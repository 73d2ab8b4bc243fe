"""Other nodes seen as sockets: :class:`RemotePeer` and the :class:`RemotePeers` registry.

A :class:`RemotePeer` stands for one (node, environment, role): on the node of a
harness socket, the environment's "socket" is the remote peer of the node holding it;
on the node holding the environment, a stream owned by a harness elsewhere is owned by
the remote peer of that harness's node. It keeps a socket's queue contract (the router
treats it like any :class:`~exec_server.rendezvous.router.SocketPeer`): frames with
room in the bus channel's window go straight to the
:class:`~exec_server.rendezvous.cluster.frame_bus.FrameBus`; the rest wait in the
peer's queue, bounded like a socket's, and drain into the channel as credit comes back.

:class:`RemotePeers` owns the peers of one router: one per key, replaced when the node
behind it restarts, closed when dropped or when nothing refers to them any more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ...relay.control import ControlMessage, PauseOutput, ResumeOutput
from ...relay.control import encode_control as _encode_control
from ..cluster.frame_bus import FrameBus, RemoteChannel
from ..cluster.records import NodeRef
from ..cluster.routing import Direction as BusDirection
from ..router import RouterConfig, SocketPeer, _StreamRoute
from ..url_signing import UrlRole

__all__ = ["RemotePeer", "RemotePeers", "node_of"]

BusOf = Callable[[], FrameBus | None]
"""The router's frame bus (attached after the router is built; None until then)."""


class _BusSink:
    """A :class:`RemotePeer`'s queue drains here: into its channel, waiting for credit."""

    def __init__(self, peer: RemotePeer) -> None:
        self._peer = peer

    async def send_bytes(self, data: bytes) -> None:
        peer = self._peer
        channel = peer.channel()
        if channel is not None and channel.try_send(data, peer.direction):
            return
        if channel is not None:
            # Below the window again, but maybe not by this frame's size: it goes anyway
            # (a window is exceeded by at most one frame).
            await channel.wait_for_room()
            channel = peer.channel()
        if channel is None or not channel.force_send(data, peer.direction):
            raise ConnectionError(f"{peer.label}: gone")

    async def send_str(self, data: str) -> None:
        raise ConnectionError("control texts are never queued for another node")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


class RemotePeer(SocketPeer):
    """Another node, seen as one socket: its harnesses of one environment (``role`` is
    harness) or the environment it holds (``role`` is environment)."""

    remote = True

    def __init__(
        self,
        bus_of: BusOf,
        config: RouterConfig,
        node: NodeRef,
        environment_id: str,
        role: UrlRole,
    ) -> None:
        self.node = node
        self.direction = (
            BusDirection.ENVIRONMENT_TO_HARNESS
            if role is UrlRole.HARNESS
            else BusDirection.HARNESS_TO_ENVIRONMENT
        )
        self._bus_of = bus_of
        self._channel: RemoteChannel | None = None
        super().__init__(
            _BusSink(self),
            role,
            environment_id,
            "",
            max_queue_bytes=config.max_queue_bytes,
            max_queue_frames=config.max_queue_frames,
            label=f"node {node} ({role.value} side of {environment_id})",
        )

    def channel(self) -> RemoteChannel | None:
        """The bus channel to the node (a new one after the bus closed the old)."""
        if self.closed:
            return None
        channel = self._channel
        if channel is None or channel.closed:
            bus = self._bus_of()
            if bus is None:
                return None
            channel = self._channel = bus.channel(self.node.node_id, self.environment_id)
        return channel

    def _send_now(self, data: bytes) -> bool:
        """Straight to the bus when nothing waits here (no frame queued, none in the
        writer waiting for credit) and the window has room."""
        if self.queued_frames or not self._idle:
            return False
        channel = self.channel()
        return channel is not None and channel.try_send(data, self.direction)

    def write_at_once(self, data: bytes | memoryview, stream: _StreamRoute | None) -> bool:
        """Straight to the bus (:meth:`SocketPeer.write_at_once`'s contract: nothing
        waits before it and the window has room, else False with nothing sent); a view
        of a read buffer is copied."""
        if self.closed or self.queued_frames or not self._idle:
            return False
        channel = self.channel()
        payload = data if type(data) is bytes else bytes(data)
        if channel is None or not channel.try_send(payload, self.direction):
            return False
        if stream is not None and self.on_sent is not None:
            self.on_sent(self, stream, len(data))
        return True

    def try_enqueue(self, data: bytes) -> bool:
        if self.closed:
            return False
        return self._send_now(data) or super().try_enqueue(data)

    def force_enqueue(self, data: bytes | str, stream: _StreamRoute | None = None) -> bool:
        if self.closed:
            return False
        if type(data) is bytes and self._send_now(data):
            return True
        return super().force_enqueue(data, stream)

    def send_control(self, message: ControlMessage) -> None:
        """Pauses and resumes for the environment go to its node (which tells it)."""
        if self.role is UrlRole.ENVIRONMENT and isinstance(message, PauseOutput | ResumeOutput):
            channel = self.channel()
            if channel is not None:
                channel.send_control(_encode_control(message).encode())


def node_of(peer: SocketPeer | None) -> NodeRef | None:
    """The node a remote peer stands for; None for a local socket (or no peer)."""
    return peer.node if isinstance(peer, RemotePeer) else None


class RemotePeers:
    """The remote peers of one router, one per (node id, environment id, role)."""

    def __init__(
        self,
        bus_of: BusOf,
        config: RouterConfig,
        on_sent: Callable[[SocketPeer, _StreamRoute, int], None],
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._bus_of = bus_of
        self._config = config
        self._on_sent = on_sent
        self._spawn = spawn
        self._peers: dict[tuple[str, str, UrlRole], RemotePeer] = {}

    def __iter__(self) -> Iterator[RemotePeer]:
        return iter(list(self._peers.values()))

    def get(self, node: NodeRef, environment_id: str, role: UrlRole) -> RemotePeer:
        """The peer for that node incarnation (a new one if the node restarted)."""
        key = (node.node_id, environment_id, role)
        peer = self._peers.get(key)
        if peer is not None and peer.node == node and not peer.closed:
            return peer
        if peer is not None:
            self.drop(peer)
        peer = RemotePeer(self._bus_of, self._config, node, environment_id, role)
        peer.on_sent = self._on_sent
        peer.start()
        self._peers[key] = peer
        return peer

    def drop(self, peer: SocketPeer) -> None:
        """Forget and close a remote peer (a local socket is left alone)."""
        if not isinstance(peer, RemotePeer):
            return
        key = (peer.node.node_id, peer.environment_id, peer.role)
        if self._peers.get(key) is peer:
            del self._peers[key]
        if not peer.closed:
            self._spawn(peer.aclose())

    def drop_node(self, node: NodeRef) -> None:
        for peer in self:
            if peer.node == node:
                self.drop(peer)

    def drop_all(self) -> None:
        for peer in self:
            self.drop(peer)

    def sweep(self, in_use: set[SocketPeer]) -> None:
        """Close the peers that route nothing: no environment's socket, no stream, no
        queued frame."""
        for peer in self:
            if peer not in in_use and not peer.owned and not peer.queued_frames:
                self.drop(peer)
