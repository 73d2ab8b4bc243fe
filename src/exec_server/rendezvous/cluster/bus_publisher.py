"""The sending side of the frame bus on the wire: :class:`Publisher`.

Every frame is written to the bus's connection the moment the router sends it, on the
router's call, in order: :meth:`~exec_server.rendezvous.cluster.nats_client.
CoreNatsClient.publish` writes to the socket (or, between connections, to its bounded
reconnect buffer) and never suspends, so there is no queue or writer task here and a
channel's frames, and a split frame's parts, stay in order and contiguous. Frames
above the current server's ``max_payload`` (less room for the header; read per frame,
as servers of one cluster may differ) are split (:func:`~exec_server.rendezvous.
cluster.bus_wire.split_frame`).

A frame the connection refuses (closed, or its buffer full) is a loss the channel must
not hide: the ``on_lost`` callback starts the channel's next generation, called soon
after rather than from inside the router's call that sent the frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .bus_wire import HEADER, SYNC, frame_header, frames_subject, split_frame
from .flow import SendChannel
from .nats_client import CoreNatsClient, NatsClientError
from .nats_wire import encode_subject, header_block_start
from .records import NodeRef

if TYPE_CHECKING:
    from .nats_bus import BusStats

__all__ = ["OutboundChannel", "Publisher"]

log = logging.getLogger(__name__)

_MIN_CHUNK = 1024
_ENCODINGS_KEPT = 4096
"""Encoded subjects and header starts kept (all forgotten at once beyond it)."""


class OutboundChannel(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def environment_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def state(self) -> SendChannel: ...


class Publisher:
    """Publishes frames of channels in order (module docstring)."""

    def __init__(
        self,
        nc: CoreNatsClient,
        prefix: str,
        node: NodeRef,
        header_allowance: int,
        stats: BusStats,
        on_lost: Callable[[OutboundChannel], None],
    ) -> None:
        self._nc = nc
        self._prefix = prefix
        self.node = node
        """This node (the bus sets a new incarnation here)."""
        self._header_allowance = header_allowance
        """Bytes of ``max_payload`` left for a part's NATS header block."""
        self._stats = stats
        self._on_lost = on_lost
        self._encodings: dict[tuple[str, str, str, int], tuple[NodeRef, bytes, bytes]] = {}
        """Per channel, kind and generation: this node (the incarnation encoded), the
        subject and the header block's start (see :meth:`_encoded`)."""

    def send(
        self, channel: OutboundChannel, generation: int, seq: int, kind: str, data: bytes
    ) -> None:
        """Publish one frame (or sync) of ``channel`` now."""
        node = self.node
        max_chunk = max(_MIN_CHUNK, self._nc.max_payload - self._header_allowance)
        try:
            if len(data) <= max_chunk:
                subject, start = self._encoded(channel, kind, generation)
                self._nc.publish_with_header(subject, start + b"%d\r\n\r\n" % seq, data)
            else:
                subject_text = frames_subject(self._prefix, channel.node_id, node.node_id)
                header = frame_header(
                    channel.environment_id, kind, node.incarnation, generation, seq
                )
                for payload, part_header in split_frame(data, header, max_chunk):
                    self._nc.publish(subject_text, payload, {HEADER: part_header})
        except NatsClientError as exc:
            log.info("could not forward a frame to %s: %r", channel.node_id, exc)
            asyncio.get_running_loop().call_soon(self._lose_if_current, channel, generation)
            return
        if kind != SYNC:
            self._stats.frames_sent += 1
            self._stats.bytes_sent += len(data)

    def _encoded(self, channel: OutboundChannel, kind: str, generation: int) -> tuple[bytes, bytes]:
        """The frames subject to the channel's node and the start of the header block up
        to the ``seq`` (everything of a whole frame's header but its last field), encoded
        once per channel, kind, generation and incarnation of this node."""
        key = (channel.node_id, channel.environment_id, kind, generation)
        cached = self._encodings.get(key)
        node = self.node
        if cached is not None and cached[0] is node:
            return cached[1], cached[2]
        if len(self._encodings) >= _ENCODINGS_KEPT:
            self._encodings.clear()
        subject = encode_subject(frames_subject(self._prefix, channel.node_id, node.node_id))
        text = frame_header(channel.environment_id, kind, node.incarnation, generation, 0)
        start = header_block_start(HEADER, text[:-1])  # the header without its seq
        self._encodings[key] = (node, subject, start)
        return subject, start

    def _lose_if_current(self, channel: OutboundChannel, generation: int) -> None:
        if not channel.closed and generation == channel.state.generation:
            self._on_lost(channel)
