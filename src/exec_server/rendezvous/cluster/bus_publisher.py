"""The sending side of the frame bus on the wire: :class:`Publisher`.

One connection and one writer publish everything in order, so a channel's frames (and
a split frame's parts) stay in order and contiguous. A frame that fits in one message
and finds nothing queued before it is published at once, without a task switch:
nats-py's ``publish`` only appends to its buffer and kicks its flusher, and does not
suspend while the buffer has room, which the connection's ``pending_size`` (set above
the flow control's cap) guarantees. Should it suspend anyway, a task finishes it and
later frames queue behind that task. Frames above ``max_payload`` are split
(:func:`~exec_server.rendezvous.cluster.bus_wire.split_frame`) by the writer task.

A frame NATS refuses (not connected and nats-py's reconnect buffer full, or closed) is
a loss the channel must not hide: the ``on_lost`` callback starts the channel's next
generation. Items of a channel that was reset or closed since are skipped (their
accounting went with the old generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from .bus_wire import HEADER, SYNC, frame_header, frames_subject, split_frame
from .flow import SendChannel
from .records import NodeRef

if TYPE_CHECKING:
    from .nats_bus import BusStats

__all__ = ["OutboundChannel", "Outgoing", "Publisher"]

log = logging.getLogger(__name__)


class OutboundChannel(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def environment_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def state(self) -> SendChannel: ...


@dataclass(slots=True)
class Outgoing:
    channel: OutboundChannel
    generation: int
    seq: int
    kind: str
    data: bytes

    def is_current(self) -> bool:
        """The channel is open and still in the generation this item belongs to."""
        return not self.channel.closed and self.generation == self.channel.state.generation


class Publisher:
    """Publishes :class:`Outgoing` items in order (module docstring); :meth:`run` is the
    owner's writer task."""

    def __init__(
        self,
        nc: NatsClient,
        prefix: str,
        node: NodeRef,
        max_chunk: int,
        stats: BusStats,
        on_lost: Callable[[OutboundChannel], None],
    ) -> None:
        self._nc = nc
        self._prefix = prefix
        self.node = node
        """This node (the bus sets a new incarnation here)."""
        self._max_chunk = max_chunk
        self._stats = stats
        self._on_lost = on_lost
        self._outbox: deque[Outgoing] = deque()
        self._ready = asyncio.Event()
        self._stalled: asyncio.Future[None] | None = None
        """A publish that suspended, finishing in a task (frames queue behind it)."""
        self._closed = False

    def close(self) -> list[asyncio.Task[None]]:
        """Stop; what is still running, for the owner to cancel and await."""
        self._closed = True
        self._ready.set()
        return [self._stalled] if isinstance(self._stalled, asyncio.Task) else []

    def queue(self, item: Outgoing) -> None:
        if not self._outbox and self._stalled is None and len(item.data) <= self._max_chunk:
            self._publish_now(item)
            return
        self._outbox.append(item)
        self._ready.set()

    def _route(self, item: Outgoing) -> tuple[str, str]:
        node = self.node
        channel = item.channel
        subject = frames_subject(self._prefix, channel.node_id, node.node_id)
        header = frame_header(
            channel.environment_id, item.kind, node.incarnation, item.generation, item.seq
        )
        return subject, header

    def _publish_now(self, item: Outgoing) -> None:
        """Publish without a task switch (module docstring)."""
        channel = item.channel
        if channel.closed or item.generation != channel.state.generation:
            return
        subject, header = self._route(item)
        publishing = self._nc.publish(subject, item.data, headers={HEADER: header})
        try:
            suspended = publishing.send(None)
        except StopIteration:
            pass
        except NatsError as exc:
            log.info("could not forward a frame to %s: %r", item.channel.node_id, exc)
            # Not from inside the router's call that sent it: report the loss next.
            asyncio.get_running_loop().call_soon(self._lose_if_current, item)
            return
        else:
            self._stalled = asyncio.ensure_future(_finish(publishing, suspended))
        if item.kind != SYNC:
            self._stats.frames_sent += 1
            self._stats.bytes_sent += len(item.data)

    def _lose_if_current(self, item: Outgoing) -> None:
        if item.is_current():
            self._on_lost(item.channel)

    def _count(self, item: Outgoing) -> None:
        if item.kind != SYNC:
            self._stats.frames_sent += 1
            self._stats.bytes_sent += len(item.data)

    async def run(self) -> None:
        outbox = self._outbox
        publish = self._nc.publish
        while not self._closed:
            if self._stalled is not None:
                with contextlib.suppress(Exception):
                    await self._stalled
                self._stalled = None
                continue
            if not outbox:
                self._ready.clear()
                await self._ready.wait()
                continue
            item = outbox.popleft()
            if not item.is_current():
                continue  # the channel was reset or closed: its accounting went with it
            subject, header = self._route(item)
            try:
                for payload, part_header in split_frame(item.data, header, self._max_chunk):
                    await publish(subject, payload, headers={HEADER: part_header})
            except NatsError as exc:
                log.info("could not forward a frame to %s: %r", item.channel.node_id, exc)
                self._on_lost(item.channel)
                continue
            self._count(item)


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
