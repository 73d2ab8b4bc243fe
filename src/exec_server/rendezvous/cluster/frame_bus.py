"""The frame bus interface: "deliver these frame bytes to the node that holds that socket".

The router sees a remote node the way it sees a local socket: a
:class:`RemoteChannel` per (node, environment id) with the same queue contract as a
websocket peer (``has_room`` / ``try_send`` / ``force_send`` / ``wait_for_room``), and an
:class:`InboundHandler` it implements to receive what other nodes forward. Payloads
are the relay frame bytes, untouched; the bus adds only routing metadata.

Guarantees of an implementation (:class:`~exec_server.rendezvous.cluster.nats_bus.
NatsFrameBus`):

* **Order** per channel: frames are delivered in the order they were sent. Each
  channel's frames are delivered by one task, one at a time (``deliver`` may wait, e.g.
  for room in the environment socket's queue); channels do not wait for each other.
* **Bounded memory** and **backpressure**: at most a window of unacknowledged bytes per
  channel and a cap per bus; ``try_send`` refuses beyond that and ``wait_for_room``
  waits, exactly like a full socket queue.
* **No silent loss**: frames lost between nodes (NATS restarted, a slow consumer) make
  :meth:`InboundHandler.channel_lost` fire on both nodes for that channel; frames
  after the loss keep flowing in a new generation.
* **Sender identity**: :attr:`RemoteFrame.sender` is the node named by the NATS
  subject the frame arrived on. With per-node NATS users whose publish permission is
  limited to subjects ending in their own node id (``<prefix>.frames.*.<node>`` and
  ``<prefix>.credit.*.<node>``), NATS authenticates it; without NATS authentication any
  client on the NATS account can claim any node id (the README says to use
  credentials). Whether that node may send frames for that stream is the router's check
  (:func:`~exec_server.rendezvous.cluster.routing.verify_inbound` against the shared
  ownership records), so a node that lost a stream or a lease is refused either way.
* Same-node traffic never reaches the bus: routing answers ``ToLocal`` first.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from .records import NodeRef
from .routing import Direction

__all__ = ["FrameBus", "InboundHandler", "RemoteChannel", "RemoteFrame"]


class RemoteFrame(msgspec.Struct, frozen=True, gc=False):
    """A frame another node forwarded to this one (a C-level struct: one is built per
    forwarded frame)."""

    sender: NodeRef
    environment_id: str
    direction: Direction
    data: bytes
    control: bool = False
    """A control message of the router (``data`` is its JSON text, see
    :meth:`RemoteChannel.send_control`), not a relay frame."""


class InboundHandler(Protocol):
    """What the router implements to receive forwarded frames."""

    async def deliver(self, frame: RemoteFrame) -> None:
        """Verify and route one frame (ordered per channel; may wait for room)."""
        ...

    def try_deliver(self, frame: RemoteFrame) -> bool:
        """Route one frame at once if that needs no waiting and no lookup (the common
        case: a frame of a stream already routed here, with room at its socket); False
        to have it delivered by :meth:`deliver` instead. Called only when nothing of
        the channel waits before it, so order is kept."""
        ...

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        """Frames between this node and ``node_id`` for this environment may have been
        lost (either direction): reset what cannot recover."""
        ...

    def flush_delivered(self) -> None:
        """The frames of one read from the bus were handed over (:meth:`try_deliver`):
        write what was gathered for the local sockets now, not at the end of the loop
        iteration."""
        ...


class RemoteChannel(Protocol):
    """The sending end towards one node, for one environment id."""

    @property
    def node_id(self) -> str: ...

    @property
    def environment_id(self) -> str: ...

    @property
    def closed(self) -> bool:
        """The peer is gone (dead node, bus closed): sends are refused."""
        ...

    def has_room(self) -> bool: ...

    def try_send(self, data: bytes, direction: Direction) -> bool:
        """Send unless the window is full (a frame always passes an empty window)."""
        ...

    def force_send(self, data: bytes, direction: Direction) -> bool:
        """Send regardless of the window (control frames such as resets)."""
        ...

    async def wait_for_room(self) -> None:
        """Return once the window has room or the channel is closed."""
        ...

    def send_control(self, data: bytes) -> bool:
        """Send a small control message of the router, in order with the channel's
        frames and regardless of the window (the harness's node asking the environment's
        node to pause or resume one stream's output). It arrives as a
        :class:`RemoteFrame` with ``control=True`` and ``direction``
        ``HARNESS_TO_ENVIRONMENT``."""
        ...


class FrameBus(Protocol):
    @property
    def connected(self) -> bool: ...

    def channel(self, node_id: str, environment_id: str) -> RemoteChannel: ...

    def forget_node(self, node_id: str) -> None:
        """A node died: close the channels to it and drop what it sent."""
        ...

    def set_node(self, node: NodeRef) -> None:
        """This node's incarnation changed (lease lost and regained): every channel is
        closed and starts over."""
        ...

    async def close(self) -> None: ...
