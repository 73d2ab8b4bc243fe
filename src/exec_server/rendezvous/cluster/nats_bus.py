"""The frame bus on core NATS: :class:`NatsFrameBus`.

Each node subscribes to ``<prefix>.frames.<self>.*`` and ``<prefix>.credit.<self>.*``
(subjects, headers and credit messages: :mod:`~exec_server.rendezvous.cluster.bus_wire`).
The bus keeps a :class:`NatsRemoteChannel` per (receiving node, environment id) with a
:class:`~exec_server.rendezvous.cluster.flow.SendChannel` of credit, counts the bytes
unacknowledged by all channels together, and applies the grants and resets that come
back; :mod:`~exec_server.rendezvous.cluster.bus_publisher` puts frames on the wire in
order and :mod:`~exec_server.rendezvous.cluster.bus_receiver` takes them off, checks
their order and hands them to the router. Flow control and loss detection are
:mod:`~exec_server.rendezvous.cluster.flow`'s.

The bus has its own NATS connection, a :class:`~exec_server.rendezvous.cluster.
nats_client.CoreNatsClient` (not nats-py, which the shared state uses): a frame is
written to the socket on the router's call and a received one reaches the router from
the socket's read, with no task switch on either side unless the router must wait.

Memory stays bounded whatever NATS or a peer does: a channel has at most ``window_bytes``
unacknowledged, the bus at most ``max_unacked_bytes``, and the connection's
``pending_size`` (its reconnect buffer, and the most its socket buffer may hold) is set
above that cap, so flow control, not the connection, is what holds senders back.
Received frames wait in their channel's queue, bounded by the sender's window (a sender
exceeding it is treated as having lost frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from .bus_publisher import OutboundChannel, Publisher
from .bus_receiver import FrameReceiver
from .bus_wire import (
    CONTROL,
    HEADER,
    KIND_OF,
    SYNC,
    ChannelReset,
    Grant,
    credit_subject,
    parse_credit,
    probe_text,
    sender_of,
)
from .flow import DEFAULT_WINDOW_BYTES, SendChannel
from .frame_bus import InboundHandler
from .nats_client import CoreNatsClient, NatsClientError
from .nats_connection import NatsClusterConfig, connect_core
from .nats_wire import Msg
from .records import NodeRef, new_incarnation
from .routing import Direction
from .tasks import CLOSE_TIMEOUT_S, cancel_and_wait, finish_within

__all__ = [
    "DEFAULT_MAX_UNACKED_BYTES",
    "HEADER",
    "BusConfig",
    "BusStats",
    "NatsFrameBus",
    "NatsRemoteChannel",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_UNACKED_BYTES = 32 * 1024 * 1024
"""Unacknowledged bytes per bus (all channels): the most a stalled NATS can pin."""

_HEADER_ALLOWANCE = 1024
"""Bytes of ``max_payload`` left for the NATS header of each part."""
_PROBE_RETRY_S = 0.2


@dataclass(frozen=True, slots=True)
class BusConfig:
    window_bytes: int = DEFAULT_WINDOW_BYTES
    max_unacked_bytes: int = DEFAULT_MAX_UNACKED_BYTES
    probe_interval_s: float = 0.5
    """How often channels with unacknowledged bytes and no progress send a sync."""

    def __post_init__(self) -> None:
        if self.window_bytes <= 0 or self.max_unacked_bytes < self.window_bytes:
            raise ValueError("need 0 < window_bytes <= max_unacked_bytes")
        if self.probe_interval_s <= 0:
            raise ValueError("probe_interval_s must be positive")


@dataclass
class BusStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    grants_sent: int = 0
    syncs_sent: int = 0
    channels_lost: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """Inbound messages dropped, by reason (``stale``, ``malformed``, ``gap``, ...)."""


class NatsRemoteChannel:
    """:class:`~exec_server.rendezvous.cluster.frame_bus.RemoteChannel` on the bus."""

    def __init__(self, bus: NatsFrameBus, node_id: str, environment_id: str) -> None:
        self._bus = bus
        self._node_id = node_id
        self._environment_id = environment_id
        self.state = SendChannel(window=bus.config.window_bytes)
        self._closed = False
        self._room = asyncio.Event()
        self._room.set()

    def __repr__(self) -> str:
        return f"<NatsRemoteChannel to {self._node_id} for {self._environment_id}>"

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def environment_id(self) -> str:
        return self._environment_id

    @property
    def closed(self) -> bool:
        return self._closed

    def has_room(self) -> bool:
        return not self._closed and self.state.has_room() and self._bus._has_room()

    def try_send(self, data: bytes, direction: Direction) -> bool:
        if self._closed:
            return False
        size = len(data)
        if not (self.state.can_take(size) and self._bus._can_take(size)):
            self._blocked()
            return False
        self._bus._send(self, KIND_OF[direction], data)
        return True

    def force_send(self, data: bytes, direction: Direction) -> bool:
        if self._closed:
            return False
        self._bus._send(self, KIND_OF[direction], data)
        return True

    def send_control(self, data: bytes) -> bool:
        if self._closed:
            return False
        self._bus._send(self, CONTROL, data)
        return True

    async def wait_for_room(self) -> None:
        while not self.has_room() and not self._closed:
            self._blocked()
            self._room.clear()
            self._bus._waiting.add(self)
            try:
                await self._room.wait()
            finally:
                self._bus._waiting.discard(self)

    def _blocked(self) -> None:
        """Out of credit: ask the receiver for a grant (once per episode)."""
        if not self.state.sync_pending and self.state.in_flight > 0:
            self.state.sync_pending = True
            self._bus._sync(self)

    def _wake(self) -> None:
        self._room.set()

    def _close(self) -> None:
        self._closed = True
        self._room.set()


class NatsFrameBus:
    """Forwards frames between nodes over core NATS (module docstring). Create with
    :meth:`open`; the handler receives what other nodes send."""

    def __init__(
        self,
        config: NatsClusterConfig,
        bus_config: BusConfig,
        node: NodeRef,
        handler: InboundHandler,
        nc: CoreNatsClient,
    ) -> None:
        self.cluster_config = config
        self.config = bus_config
        self.stats = BusStats()
        self._node = node
        self._handler = handler
        self._nc = nc
        self._prefix = config.prefix
        self._channels: dict[tuple[str, str], NatsRemoteChannel] = {}
        self._unacked = 0
        self._waiting: set[NatsRemoteChannel] = set()
        self._publisher = Publisher(
            nc,
            config.prefix,
            node,
            _HEADER_ALLOWANCE,
            self.stats,
            self._lose_sent,
        )
        self._receiver = FrameReceiver(
            node.node_id,
            handler,
            self.stats,
            bus_config.window_bytes,
            self._credit,
            nc.last_in_read,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: tuple[str, asyncio.Future[None]] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        config: NatsClusterConfig,
        node: NodeRef,
        handler: InboundHandler,
        bus_config: BusConfig | None = None,
    ) -> NatsFrameBus:
        bus_config = bus_config or BusConfig()
        holder: list[NatsFrameBus] = []

        def reconnected() -> None:
            if holder:
                holder[0]._on_reconnected()

        nc = await connect_core(
            config,
            "frames",
            reconnected=reconnected,
            # Above everything flow control lets through: never the binding limit.
            pending_size=2 * bus_config.max_unacked_bytes + 4 * 1024 * 1024,
        )
        bus = cls(config, bus_config, node, handler, nc)
        holder.append(bus)
        try:
            await bus._start()
        except BaseException:
            await bus.close()
            raise
        return bus

    async def _start(self) -> None:
        me = self._node.node_id
        for kind, callback in (("frames", self._receiver.on_frame), ("credit", self._on_credit)):
            self._nc.subscribe(f"{self._prefix}.{kind}.{me}.*", callback)
        self._nc.after_read = self._receiver.read_done
        await self._wait_for_subscriptions()
        self._tasks.append(asyncio.ensure_future(self._probe_loop()))

    async def _wait_for_subscriptions(self) -> None:
        """Return once the server routes our subjects to us: a message we publish
        after the SUBs comes back to us through them (end to end, whatever the server
        or a route in a NATS cluster does with interest)."""
        me = self._node.node_id
        token = new_incarnation()
        self._probe = (token, asyncio.get_running_loop().create_future())
        subject = credit_subject(self._prefix, me, me)
        async with asyncio.timeout(self.cluster_config.connect_timeout_s * 2):
            while True:
                with contextlib.suppress(NatsClientError):  # between connections
                    self._nc.publish(subject, probe_text(token))
                try:
                    async with asyncio.timeout(_PROBE_RETRY_S):
                        await asyncio.shield(self._probe[1])
                    return
                except TimeoutError:
                    continue

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for channel in self._channels.values():
            channel._close()
        await cancel_and_wait([*self._tasks, *self._receiver.close()])
        self._tasks.clear()
        await finish_within(
            self._nc.close(), 2 * CLOSE_TIMEOUT_S, "closing the frame bus connection"
        )

    # --- FrameBus -----------------------------------------------------------------------

    @property
    def node(self) -> NodeRef:
        return self._node

    @property
    def connected(self) -> bool:
        return not self._closed and self._nc.is_connected

    def channel(self, node_id: str, environment_id: str) -> NatsRemoteChannel:
        if node_id == self._node.node_id:
            raise ValueError("same-node frames never go through the bus")
        key = (node_id, environment_id)
        channel = self._channels.get(key)
        if channel is None or channel.closed:
            channel = self._channels[key] = NatsRemoteChannel(self, node_id, environment_id)
            if self._closed:
                channel._close()
        return channel

    def forget_node(self, node_id: str) -> None:
        for key in [k for k in self._channels if k[0] == node_id]:
            self._drop_channel(self._channels.pop(key))
        self._receiver.forget_node(node_id)

    def set_node(self, node: NodeRef) -> None:
        if node.node_id != self._node.node_id:
            raise ValueError("a node keeps its node id; only the incarnation changes")
        if node == self._node:
            return
        self._node = self._publisher.node = node
        for channel in list(self._channels.values()):
            self._drop_channel(channel)
        self._channels.clear()

    def _drop_channel(self, channel: NatsRemoteChannel) -> None:
        self._unacked -= channel.state.in_flight
        channel.state.reset()
        channel._close()

    # --- sending ------------------------------------------------------------------------

    def _has_room(self) -> bool:
        return self._unacked < self.config.max_unacked_bytes

    def _can_take(self, size: int) -> bool:
        return self._unacked == 0 or self._unacked + size <= self.config.max_unacked_bytes

    def _send(self, channel: NatsRemoteChannel, kind: str, data: bytes) -> None:
        state = channel.state
        size = len(data)
        seq = state.take(size)
        self._unacked += size
        self._publisher.send(channel, state.generation, seq, kind, data)

    def _sync(self, channel: NatsRemoteChannel) -> None:
        state = channel.state
        self.stats.syncs_sent += 1
        self._publisher.send(channel, state.generation, state.last_seq, SYNC, b"")

    def _lose_sent(self, channel: OutboundChannel, at_least: int = 0) -> None:
        """Frames of the channel's current generation may be lost: start a new one."""
        assert isinstance(channel, NatsRemoteChannel)
        self._unacked -= channel.state.in_flight
        channel.state.reset(at_least)
        self._wake_waiters(channel)
        self.stats.channels_lost += 1
        self._handler.channel_lost(channel.node_id, channel.environment_id)

    async def _probe_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.config.probe_interval_s)
            for channel in list(self._channels.values()):
                if not channel.closed and channel.state.needs_probe():
                    self._sync(channel)

    def _on_reconnected(self) -> None:
        for channel in self._channels.values():
            if not channel.closed and channel.state.in_flight > 0:
                self._sync(channel)

    def _wake_waiters(self, channel: NatsRemoteChannel) -> None:
        channel._wake()
        if self._waiting and self._has_room():
            for waiting in list(self._waiting):
                waiting._wake()

    # --- receiving ------------------------------------------------------------------------

    def _credit(self, node_id: str, text: str) -> None:
        subject = credit_subject(self._prefix, node_id, self._node.node_id)
        try:
            self._nc.publish(subject, text.encode())
        except NatsClientError as exc:  # repaired by the sender's next sync
            log.debug("could not send credit to %s: %r", node_id, exc)

    def _on_credit(self, msg: Msg) -> None:
        receiver_id = sender_of(msg.subject)
        if receiver_id == self._node.node_id:
            self._on_probe(msg.data)
            return
        credit = parse_credit(msg.data)
        if credit is None:
            self.stats.dropped["malformed_credit"] += 1
            return
        channel = self._channels.get((receiver_id, credit.environment_id))
        if channel is None or channel.closed or credit.incarnation != self._node.incarnation:
            return
        state = channel.state
        if isinstance(credit, Grant):
            before = state.in_flight
            if state.on_grant(credit.generation, credit.consumed):
                self._unacked -= before - state.in_flight
                self._wake_waiters(channel)
        elif isinstance(credit, ChannelReset) and credit.generation == state.generation:
            self._lose_sent(channel, credit.generation)
        else:
            self.stats.dropped["malformed_credit"] += 1

    def _on_probe(self, data: bytes) -> None:
        probe = self._probe
        if probe is not None and data == probe_text(probe[0]):
            if not probe[1].done():
                probe[1].set_result(None)
        else:
            self.stats.dropped["malformed_credit"] += 1
