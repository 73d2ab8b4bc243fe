"""The receiving side of the frame bus: :class:`FrameReceiver`.

One :class:`~exec_server.rendezvous.cluster.flow.ReceiveChannel` per (sending node,
environment id), started over when the sender's incarnation changes. Each message
(header parsed by :mod:`~exec_server.rendezvous.cluster.bus_wire`; a malformed one is
dropped and counted) is checked against the channel's sequence:

* in order: handed to the router (:class:`~exec_server.rendezvous.cluster.frame_bus.
  InboundHandler`) at once when nothing of the channel waits and the router can take
  it without waiting (``try_deliver``; at the read's last message, or once the read is
  done, :meth:`FrameReceiver.read_done`, it has them written out); otherwise queued and
  delivered in order by one task per channel (``deliver`` may wait for room). Credit is
  granted back as frames are consumed, through the ``credit`` callback (the bus
  publishes it);
* from a generation already reset: dropped (``stale``);
* after a gap, or beyond what the sender's window allows to be queued here: the channel
  is broken, the sender told (``reset``) and the router told (``channel_lost``).

Memory stays bounded by the sender's window: a sender exceeding it is treated as
having lost frames.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...relay.frame_codec import DEFAULT_MAX_FRAME_BYTES
from .bus_wire import (
    CONTROL,
    DIRECTION_OF,
    HEADER,
    SYNC,
    FrameHeader,
    PartLost,
    Reassembler,
    parse_frame_header,
    sender_of,
)
from .bus_wire import grant_text as _grant_text
from .bus_wire import reset_text as _reset_text
from .flow import Arrival, ReceiveChannel
from .frame_bus import InboundHandler, RemoteFrame
from .nats_wire import Msg
from .records import NodeRef
from .routing import Direction

if TYPE_CHECKING:
    from .nats_bus import BusStats

__all__ = ["FrameReceiver"]

log = logging.getLogger(__name__)

ChannelKey = tuple[str, str]
"""(sending node id, environment id)."""

SendCredit = Callable[[str, str], None]
"""Publish a credit text to a node: ``(node id, text)`` (never blocks)."""


@dataclass(slots=True)
class _Queued:
    frame: RemoteFrame
    incarnation: str
    generation: int


class FrameReceiver:
    """Inbound channels of one bus (module docstring); the bus owns it."""

    def __init__(
        self,
        own_id: str,
        handler: InboundHandler,
        stats: BusStats,
        window_bytes: int,
        credit: SendCredit,
        last_in_read: Callable[[], bool] | None = None,
    ) -> None:
        self._own_id = own_id
        self._handler = handler
        self._stats = stats
        self._window = window_bytes
        self._credit = credit
        self._last_in_read = last_in_read
        """Whether the message being received is its read's last (then what it was
        handed to is written out at once, before the rest of this path)."""
        # What a sender honouring its window can have queued here: a window, one frame
        # that passed an empty window (up to the largest relay frame) and control frames.
        self._inbound_limit = 2 * window_bytes + DEFAULT_MAX_FRAME_BYTES
        self._receiving: dict[ChannelKey, tuple[NodeRef, ReceiveChannel]] = {}
        """Per channel: the sender (node and incarnation) being received, its state."""
        self._inbound: dict[ChannelKey, deque[_Queued]] = {}
        self._pumps: dict[ChannelKey, asyncio.Task[None]] = {}
        self._reassembler = Reassembler()
        self._closed = False
        self._delivered = False
        """A frame was handed to the router since the last :meth:`read_done`."""

    def close(self) -> list[asyncio.Task[None]]:
        """Stop delivering; the delivery tasks, for the owner to cancel and await."""
        self._closed = True
        pumps = list(self._pumps.values())
        self._pumps.clear()
        return pumps

    def forget_node(self, node_id: str) -> None:
        for key in [k for k in self._receiving if k[0] == node_id]:
            del self._receiving[key]
            self._inbound.pop(key, None)
            pump = self._pumps.pop(key, None)
            if pump is not None:
                pump.cancel()
        self._reassembler.forget(node_id)

    def read_done(self) -> None:
        """The connection's read handed over all its messages (its ``after_read``)."""
        if self._delivered:
            self._write_delivered()

    def _write_delivered(self) -> None:
        self._delivered = False
        try:
            self._handler.flush_delivered()
        except Exception:
            log.exception("writing the frames delivered failed")

    def on_frame(self, msg: Msg) -> None:
        """A message on ``<prefix>.frames.<us>.<sender>`` (the subscription's callback,
        called from the connection's read: it never waits)."""
        sender_id = sender_of(msg.subject)
        header = parse_frame_header(sender_id, self._own_id, (msg.headers or {}).get(HEADER))
        if header is None:
            self._stats.dropped["malformed"] += 1
            return
        data = msg.data
        if header.part is not None:
            whole = self._reassemble(sender_id, header, data)
            if whole is None:
                return
            data = whole
        key = (sender_id, header.environment_id)
        sender, state = self._channel(key, header.incarnation)
        if header.kind == SYNC:
            verdict = state.on_sync(header.generation, header.seq)
            if verdict is Arrival.ACCEPT and not self._inbound.get(key):
                self._grant_if_due(key, header.incarnation, state)
        else:
            verdict = state.on_frame(header.generation, header.seq)
            if verdict is Arrival.ACCEPT:
                verdict, grant = self._accept(key, sender, header, state, data)
                if grant is not None:
                    self._send_grant(key, header.incarnation, header.generation, grant)
        if verdict is not Arrival.ACCEPT:
            self._out_of_order(key, header, state, verdict)

    def _reassemble(self, sender_id: str, header: FrameHeader, chunk: bytes) -> bytes | None:
        whole = self._reassembler.add(sender_id, header, chunk)
        if isinstance(whole, PartLost):
            self._stats.dropped["partial"] += 1
            return None
        return whole

    def _channel(self, key: ChannelKey, incarnation: str) -> tuple[NodeRef, ReceiveChannel]:
        receiving = self._receiving.get(key)
        if receiving is None or receiving[0].incarnation != incarnation:
            receiving = self._receiving[key] = (
                NodeRef(key[0], incarnation),
                ReceiveChannel(window=self._window),
            )
        return receiving

    def _accept(
        self,
        key: ChannelKey,
        sender: NodeRef,
        header: FrameHeader,
        state: ReceiveChannel,
        data: bytes,
    ) -> tuple[Arrival, int | None]:
        """An in-order frame: hand it on now or queue it. GAP if the sender ignores its
        window; the grant to send now, if any."""
        state.queued_bytes += len(data)
        if state.queued_bytes > self._inbound_limit:
            return Arrival.GAP, None
        self._stats.frames_received += 1
        self._stats.bytes_received += len(data)
        frame = RemoteFrame(
            sender,
            header.environment_id,
            DIRECTION_OF.get(header.kind, Direction.HARNESS_TO_ENVIRONMENT),
            data,
            header.kind == CONTROL,
        )
        if key not in self._pumps and self._try_deliver(frame):
            # Nothing of this channel waits: handed on without a task switch.
            if self._last_in_read is not None and self._last_in_read():
                self._write_delivered()  # now, before the credit accounting
            else:
                self._delivered = True
            return Arrival.ACCEPT, state.on_consumed(len(data), queue_empty=True)
        self._enqueue(key, _Queued(frame, header.incarnation, header.generation))
        return Arrival.ACCEPT, None

    def _out_of_order(
        self, key: ChannelKey, header: FrameHeader, state: ReceiveChannel, verdict: Arrival
    ) -> None:
        if verdict is Arrival.STALE:
            self._stats.dropped["stale"] += 1
            return
        self._stats.dropped["gap"] += 1
        detail = (
            f"got {header.kind} {header.generation}/{header.seq}, "
            f"expected {state.generation}/{state.expected_seq}"
        )
        self._broken(key, header.incarnation, state, detail)

    def _try_deliver(self, frame: RemoteFrame) -> bool:
        try:
            return self._handler.try_deliver(frame)
        except Exception:
            log.exception("delivering a frame from %s failed", frame.sender)
            return True

    def _enqueue(self, key: ChannelKey, item: _Queued) -> None:
        queue = self._inbound.get(key)
        if queue is None:
            queue = self._inbound[key] = deque()
        queue.append(item)
        if key not in self._pumps and not self._closed:
            self._pumps[key] = asyncio.ensure_future(self._pump(key, queue))

    async def _pump(self, key: ChannelKey, queue: deque[_Queued]) -> None:
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
                if receiving is None or receiving[0].incarnation != item.incarnation:
                    continue
                state = receiving[1]
                if state.generation != item.generation:
                    continue
                grant = state.on_consumed(len(item.frame.data), queue_empty=not queue)
                if grant is not None:
                    self._send_grant(key, item.incarnation, state.generation, grant)
        finally:
            if self._pumps.get(key) is asyncio.current_task():
                del self._pumps[key]
            if self._inbound.get(key) is queue and not queue:
                del self._inbound[key]

    def _grant_if_due(self, key: ChannelKey, incarnation: str, state: ReceiveChannel) -> None:
        grant = state.grant_due(queue_empty=True)
        if grant is not None:
            self._send_grant(key, incarnation, state.generation, grant)

    def _send_grant(
        self, key: ChannelKey, incarnation: str, generation: int, consumed: int
    ) -> None:
        sender_id, environment_id = key
        self._stats.grants_sent += 1
        self._credit(sender_id, _grant_text(environment_id, incarnation, generation, consumed))

    def _broken(
        self, key: ChannelKey, incarnation: str, state: ReceiveChannel, detail: str
    ) -> None:
        sender_id, environment_id = key
        generation = state.broken()
        self._stats.channels_lost += 1
        log.warning(
            "frames from %s for %s were lost (%s); resetting the channel",
            sender_id,
            environment_id,
            detail,
        )
        self._credit(sender_id, _reset_text(environment_id, incarnation, generation))
        self._handler.channel_lost(sender_id, environment_id)
