"""The frame bus on core NATS: :class:`NatsFrameBus`.

Subjects (``<prefix>`` from :class:`~exec_server.rendezvous.cluster.nats_connection.
NatsClusterConfig`; ``<to>``/``<from>`` are node ids):

* ``<prefix>.frames.<to>.<from>``: relay frame bytes as the payload, untouched, with
  one header ``Exs: <environment id> <kind> <incarnation> <generation> <seq>`` (plus
  `` <part>/<parts>`` when a frame above the server's ``max_payload`` is split). Kind
  ``h`` is harness-to-environment, ``e`` environment-to-harness, ``c`` a control
  message of the router (JSON text, harness-to-environment), ``s`` a sync (empty
  payload; ``seq`` is the last one sent). One connection and one writer task publish
  everything in order, so a channel's frames (and a split frame's parts) stay in order
  and contiguous.
* ``<prefix>.credit.<to>.<from>``: flow control back to a sender, a short text payload:
  ``grant <env> <incarnation> <generation> <consumed bytes>`` or ``reset <env>
  <incarnation> <generation>`` (``incarnation`` is the sender's being answered).

Each node subscribes to ``<prefix>.frames.<self>.*`` and ``<prefix>.credit.<self>.*``;
the sender's node id is the subject's last token (see
:mod:`~exec_server.rendezvous.cluster.frame_bus` on authenticating it). Flow control and
loss detection are :mod:`~exec_server.rendezvous.cluster.flow`'s.

Memory stays bounded whatever NATS or a peer does: a channel has at most ``window_bytes``
unacknowledged, the bus at most ``max_unacked_bytes``, and the connection's
``pending_size`` is set above that cap so nats-py never reaches the blocking (and
uncancellable) flush it does when its buffer is full. Received frames wait in their
channel's queue, bounded by the sender's window (a sender exceeding it is treated as
having lost frames), and nats-py's subscription limits are far above that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from ...relay.frame_codec import DEFAULT_MAX_FRAME_BYTES
from .flow import DEFAULT_WINDOW_BYTES, Arrival, ReceiveChannel, SendChannel
from .frame_bus import InboundHandler, RemoteFrame
from .nats_connection import NatsClusterConfig, connect_nats
from .records import NodeRef, is_valid_node_id, new_incarnation
from .routing import Direction
from .tasks import CLOSE_TIMEOUT_S, cancel_and_wait, finish_within

__all__ = [
    "DEFAULT_MAX_UNACKED_BYTES",
    "BusConfig",
    "NatsFrameBus",
    "NatsRemoteChannel",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_UNACKED_BYTES = 32 * 1024 * 1024
"""Unacknowledged bytes per bus (all channels): the most a stalled NATS can pin."""

HEADER = "Exs"
_KIND_OF = {Direction.HARNESS_TO_ENVIRONMENT: "h", Direction.ENVIRONMENT_TO_HARNESS: "e"}
_DIRECTION_OF = {kind: direction for direction, kind in _KIND_OF.items()}
_SYNC = "s"
_CONTROL = "c"
_SUBSCRIPTION_MSGS_LIMIT = 1_000_000
_SUBSCRIPTION_BYTES_LIMIT = 1 << 30
"""Far above what flow control lets senders have in flight: never the binding limit."""
_HEADER_ALLOWANCE = 1024
_PROBE_RETRY_S = 0.2
"""Bytes of ``max_payload`` left for the NATS header of each part."""


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


@dataclass(slots=True)
class _Outgoing:
    channel: NatsRemoteChannel
    generation: int
    seq: int
    kind: str
    data: bytes


@dataclass(slots=True)
class _Queued:
    frame: RemoteFrame
    incarnation: str
    generation: int


@dataclass(slots=True)
class _Assembly:
    """A split frame being reassembled (parts of one frame arrive contiguously)."""

    key: tuple[str, str, str, int, int]
    parts: int
    chunks: list[bytes]


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
        self._bus._send(self, _KIND_OF[direction], data)
        return True

    def force_send(self, data: bytes, direction: Direction) -> bool:
        if self._closed:
            return False
        self._bus._send(self, _KIND_OF[direction], data)
        return True

    def send_control(self, data: bytes) -> bool:
        if self._closed:
            return False
        self._bus._send(self, _CONTROL, data)
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
        nc: NatsClient,
    ) -> None:
        self.cluster_config = config
        self.config = bus_config
        self.stats = BusStats()
        self._node = node
        self._handler = handler
        self._nc = nc
        self._prefix = config.prefix
        self._max_chunk = max(1024, nc.max_payload - _HEADER_ALLOWANCE)
        # What a sender honouring its window can have queued here: a window, one frame
        # that passed an empty window (up to the largest relay frame) and control frames.
        self._inbound_limit = 2 * bus_config.window_bytes + DEFAULT_MAX_FRAME_BYTES
        self._channels: dict[tuple[str, str], NatsRemoteChannel] = {}
        self._unacked = 0
        self._waiting: set[NatsRemoteChannel] = set()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._receiving: dict[tuple[str, str], tuple[str, ReceiveChannel]] = {}
        self._inbound: dict[tuple[str, str], deque[_Queued]] = {}
        self._pumps: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._assembly: dict[str, _Assembly] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: tuple[str, asyncio.Future[None]] | None = None
        self._stalled: asyncio.Future[None] | None = None
        """A publish that suspended, finishing in a task (frames queue behind it)."""
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

        async def reconnected() -> None:
            if holder:
                holder[0]._on_reconnected()

        nc = await connect_nats(
            config,
            "frames",
            reconnected=reconnected,
            # Above everything flow control lets through, so a publish never blocks.
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
        for kind, callback in (("frames", self._on_frame), ("credit", self._on_credit)):
            await self._nc.subscribe(
                f"{self._prefix}.{kind}.{me}.*",
                cb=callback,
                pending_msgs_limit=_SUBSCRIPTION_MSGS_LIMIT,
                pending_bytes_limit=_SUBSCRIPTION_BYTES_LIMIT,
            )
        await self._wait_for_subscriptions()
        self._tasks.append(asyncio.ensure_future(self._write_loop()))
        self._tasks.append(asyncio.ensure_future(self._probe_loop()))

    async def _wait_for_subscriptions(self) -> None:
        """Return once the server routes our subjects to us.

        ``flush()`` cannot tell: nats-py writes its PING straight to the socket, ahead of
        SUB commands still in its pending buffer, so the PONG can come back before the
        server has the subscriptions, and frames published to us meanwhile are dropped
        for want of interest (seen here). A message we publish goes through that buffer
        after the SUBs, so once it comes back to us, both subscriptions are live.
        """
        me = self._node.node_id
        token = new_incarnation()
        self._probe = (token, asyncio.get_running_loop().create_future())
        subject = f"{self._prefix}.credit.{me}.{me}"
        async with asyncio.timeout(self.cluster_config.connect_timeout_s * 2):
            while True:
                await self._nc.publish(subject, f"probe {token}".encode())
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
        self._outbox_ready.set()
        stalled = [self._stalled] if isinstance(self._stalled, asyncio.Task) else []
        await cancel_and_wait([*self._tasks, *self._pumps.values(), *stalled])
        self._tasks.clear()
        self._pumps.clear()
        await finish_within(self._nc.close(), CLOSE_TIMEOUT_S, "closing the frame bus connection")

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
        for key in [k for k in self._receiving if k[0] == node_id]:
            del self._receiving[key]
            self._inbound.pop(key, None)
            pump = self._pumps.pop(key, None)
            if pump is not None:
                pump.cancel()
        self._assembly.pop(node_id, None)

    def set_node(self, node: NodeRef) -> None:
        if node.node_id != self._node.node_id:
            raise ValueError("a node keeps its node id; only the incarnation changes")
        if node == self._node:
            return
        self._node = node
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
        self._queue(_Outgoing(channel, state.generation, seq, kind, data))

    def _sync(self, channel: NatsRemoteChannel) -> None:
        state = channel.state
        self.stats.syncs_sent += 1
        self._queue(_Outgoing(channel, state.generation, state.last_seq, _SYNC, b""))

    def _queue(self, item: _Outgoing) -> None:
        if not self._outbox and self._stalled is None and len(item.data) <= self._max_chunk:
            self._publish_now(item)
            return
        self._outbox.append(item)
        self._outbox_ready.set()

    def _publish_now(self, item: _Outgoing) -> None:
        """Publish without a task switch. nats-py's ``publish`` only appends to its
        buffer and kicks its flusher: it does not suspend while the buffer has room,
        which ``pending_size`` (above the flow control's cap) guarantees. Should it
        suspend anyway, a task finishes it, and later frames wait for that task."""
        channel = item.channel
        if channel.closed or item.generation != channel.state.generation:
            return
        subject = f"{self._prefix}.frames.{channel.node_id}.{self._node.node_id}"
        route = (
            f"{channel.environment_id} {item.kind} {self._node.incarnation} "
            f"{item.generation} {item.seq}"
        )
        publishing = self._nc.publish(subject, item.data, headers={HEADER: route})
        try:
            suspended = publishing.send(None)
        except StopIteration:
            pass
        except NatsError as exc:
            log.info("could not forward a frame to %s: %r", channel.node_id, exc)
            # Not from inside the router's call that sent it: report the loss next.
            asyncio.get_running_loop().call_soon(self._lose_sent_if_current, channel, item)
            return
        else:
            self._stalled = asyncio.ensure_future(_finish(publishing, suspended))
        if item.kind != _SYNC:
            self.stats.frames_sent += 1
            self.stats.bytes_sent += len(item.data)

    def _lose_sent_if_current(self, channel: NatsRemoteChannel, item: _Outgoing) -> None:
        if not channel.closed and channel.state.generation == item.generation:
            self._lose_sent(channel)

    async def _write_loop(self) -> None:
        outbox = self._outbox
        publish = self._nc.publish
        frames_prefix = f"{self._prefix}.frames."
        while not self._closed:
            if self._stalled is not None:
                with contextlib.suppress(Exception):
                    await self._stalled
                self._stalled = None
                continue
            if not outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            item = outbox.popleft()
            channel = item.channel
            if channel.closed or item.generation != channel.state.generation:
                continue  # the channel was reset or closed: its accounting went with it
            subject = f"{frames_prefix}{channel.node_id}.{self._node.node_id}"
            route = (
                f"{channel.environment_id} {item.kind} {self._node.incarnation} "
                f"{item.generation} {item.seq}"
            )
            try:
                for payload, header in self._parts(item.data, route):
                    await publish(subject, payload, headers={HEADER: header})
            except NatsError as exc:
                # Not connected and nats-py's reconnect buffer is full, or closed: the
                # frame is lost, which the channel must not hide.
                log.info("could not forward a frame to %s: %r", channel.node_id, exc)
                self._lose_sent(channel)
                continue
            if item.kind != _SYNC:
                self.stats.frames_sent += 1
                self.stats.bytes_sent += len(item.data)

    def _parts(self, data: bytes, route: str) -> Iterator[tuple[bytes, str]]:
        chunk = self._max_chunk
        if len(data) <= chunk:
            yield data, route
            return
        count = -(-len(data) // chunk)
        view = memoryview(data)
        for index in range(count):
            yield bytes(view[index * chunk : (index + 1) * chunk]), f"{route} {index + 1}/{count}"

    def _lose_sent(self, channel: NatsRemoteChannel, at_least: int = 0) -> None:
        """Frames of the channel's current generation may be lost: start a new one."""
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

    # --- receiving ------------------------------------------------------------------------

    async def _on_frame(self, msg: Msg) -> None:
        sender_id = msg.subject.rsplit(".", 1)[-1]
        route = (msg.headers or {}).get(HEADER)
        fields = route.split(" ") if route else []
        if (
            len(fields) not in (5, 6)
            or not is_valid_node_id(sender_id)
            or sender_id == self._node.node_id
        ):
            self.stats.dropped["malformed"] += 1
            return
        environment_id, kind, incarnation, generation_text, seq_text = fields[:5]
        try:
            generation, seq = int(generation_text), int(seq_text)
        except ValueError:
            self.stats.dropped["malformed"] += 1
            return
        data = msg.data
        if len(fields) == 6:
            whole = self._reassemble(sender_id, fields, data)
            if whole is None:
                return
            data = whole
        key = (sender_id, environment_id)
        receiving = self._receiving.get(key)
        if receiving is None or receiving[0] != incarnation:
            receiving = self._receiving[key] = (
                incarnation,
                ReceiveChannel(window=self.config.window_bytes),
            )
        state = receiving[1]
        if kind == _SYNC:
            verdict = state.on_sync(generation, seq)
            if verdict is Arrival.ACCEPT and not self._inbound.get(key):
                await self._grant_if_due(key, incarnation, state)
        elif kind in _DIRECTION_OF or kind == _CONTROL:
            verdict = state.on_frame(generation, seq)
            if verdict is Arrival.ACCEPT:
                state.queued_bytes += len(data)
                if state.queued_bytes > self._inbound_limit:
                    verdict = Arrival.GAP  # the sender ignores its window
                else:
                    self.stats.frames_received += 1
                    self.stats.bytes_received += len(data)
                    frame = RemoteFrame(
                        NodeRef(sender_id, incarnation),
                        environment_id,
                        _DIRECTION_OF.get(kind, Direction.HARNESS_TO_ENVIRONMENT),
                        data,
                        kind == _CONTROL,
                    )
                    if key not in self._pumps and self._try_deliver(frame):
                        # Nothing of this channel waits: handed on without a task switch.
                        grant = state.on_consumed(len(data), queue_empty=True)
                        if grant is not None:
                            await self._send_grant(key, incarnation, generation, grant)
                    else:
                        self._enqueue_inbound(key, _Queued(frame, incarnation, generation))
        else:
            self.stats.dropped["malformed"] += 1
            return
        if verdict is Arrival.STALE:
            self.stats.dropped["stale"] += 1
        elif verdict is Arrival.GAP:
            self.stats.dropped["gap"] += 1
            detail = (
                f"got {kind} {generation}/{seq}, expected {state.generation}/{state.expected_seq}"
            )
            await self._broken(key, incarnation, state, detail)

    def _reassemble(self, sender_id: str, fields: list[str], chunk: bytes) -> bytes | None:
        environment_id, kind, incarnation, generation, seq, part_text = fields
        try:
            index_text, _, count_text = part_text.partition("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            self.stats.dropped["malformed"] += 1
            return None
        key = (environment_id, kind, incarnation, int(generation), int(seq))
        assembly = self._assembly.get(sender_id)
        if index == 1:
            assembly = self._assembly[sender_id] = _Assembly(key, count, [])
        elif assembly is None or assembly.key != key or len(assembly.chunks) != index - 1:
            # A part went missing; the channel's seq check reports the loss on the next
            # whole frame (this one is gone).
            self._assembly.pop(sender_id, None)
            self.stats.dropped["partial"] += 1
            return None
        assembly.chunks.append(chunk)
        if index < assembly.parts:
            return None
        del self._assembly[sender_id]
        return b"".join(assembly.chunks)

    def _try_deliver(self, frame: RemoteFrame) -> bool:
        try:
            return self._handler.try_deliver(frame)
        except Exception:
            log.exception("delivering a frame from %s failed", frame.sender)
            return True

    def _enqueue_inbound(self, key: tuple[str, str], item: _Queued) -> None:
        queue = self._inbound.get(key)
        if queue is None:
            queue = self._inbound[key] = deque()
        queue.append(item)
        if key not in self._pumps:
            self._pumps[key] = asyncio.ensure_future(self._pump(key, queue))

    async def _pump(self, key: tuple[str, str], queue: deque[_Queued]) -> None:
        """Deliver one channel's frames in order, granting credit as they are consumed."""
        try:
            while queue and not self._closed:
                item = queue[0]
                try:
                    await self._handler.deliver(item.frame)
                except Exception:
                    log.exception("delivering a frame from %s failed", item.frame.sender)
                queue.popleft()
                receiving = self._receiving.get(key)
                if receiving is None or receiving[0] != item.incarnation:
                    continue
                state = receiving[1]
                if state.generation != item.generation:
                    continue
                grant = state.on_consumed(len(item.frame.data), queue_empty=not queue)
                if grant is not None:
                    await self._send_grant(key, item.incarnation, state.generation, grant)
        finally:
            if self._pumps.get(key) is asyncio.current_task():
                del self._pumps[key]
            if self._inbound.get(key) is queue and not queue:
                del self._inbound[key]

    async def _grant_if_due(
        self, key: tuple[str, str], incarnation: str, state: ReceiveChannel
    ) -> None:
        grant = state.grant_due(queue_empty=True)
        if grant is not None:
            await self._send_grant(key, incarnation, state.generation, grant)

    async def _send_grant(
        self, key: tuple[str, str], incarnation: str, generation: int, consumed: int
    ) -> None:
        sender_id, environment_id = key
        self.stats.grants_sent += 1
        await self._credit(
            sender_id, f"grant {environment_id} {incarnation} {generation} {consumed}"
        )

    async def _broken(
        self, key: tuple[str, str], incarnation: str, state: ReceiveChannel, detail: str
    ) -> None:
        sender_id, environment_id = key
        generation = state.broken()
        self.stats.channels_lost += 1
        log.warning(
            "frames from %s for %s were lost (%s); resetting the channel",
            sender_id,
            environment_id,
            detail,
        )
        await self._credit(sender_id, f"reset {environment_id} {incarnation} {generation}")
        self._handler.channel_lost(sender_id, environment_id)

    async def _credit(self, node_id: str, text: str) -> None:
        subject = f"{self._prefix}.credit.{node_id}.{self._node.node_id}"
        try:
            await self._nc.publish(subject, text.encode())
        except NatsError as exc:  # repaired by the sender's next sync
            log.debug("could not send credit to %s: %r", node_id, exc)

    async def _on_credit(self, msg: Msg) -> None:
        receiver_id = msg.subject.rsplit(".", 1)[-1]
        if receiver_id == self._node.node_id:
            probe = self._probe
            if probe is not None and msg.data == f"probe {probe[0]}".encode():
                if not probe[1].done():
                    probe[1].set_result(None)
            else:
                self.stats.dropped["malformed_credit"] += 1
            return
        try:
            fields = msg.data.decode().split(" ")
            kind, environment_id, incarnation = fields[0], fields[1], fields[2]
            numbers = [int(value) for value in fields[3:]]
        except (UnicodeDecodeError, ValueError, IndexError):
            self.stats.dropped["malformed_credit"] += 1
            return
        channel = self._channels.get((receiver_id, environment_id))
        if channel is None or channel.closed or incarnation != self._node.incarnation:
            return
        state = channel.state
        if kind == "grant" and len(numbers) == 2:
            before = state.in_flight
            if state.on_grant(numbers[0], numbers[1]):
                self._unacked -= before - state.in_flight
                self._wake_waiters(channel)
        elif kind == "reset" and len(numbers) == 1 and numbers[0] == state.generation:
            self._lose_sent(channel, numbers[0])
        else:
            self.stats.dropped["malformed_credit"] += 1

    def _wake_waiters(self, channel: NatsRemoteChannel) -> None:
        channel._wake()
        if self._waiting and self._has_room():
            for waiting in list(self._waiting):
                waiting._wake()


async def _finish(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive a coroutine that suspended outside any task to its end: wait for what it
    yielded (an asyncio future, marked as awaited by the coroutine's own ``await``,
    which a task would have unmarked), then resume it."""
    while True:
        try:
            if waiting_on is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except BaseException as exc:
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return
