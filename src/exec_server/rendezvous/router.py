"""Routes relay frames between one environment socket and its harness sockets.

The router owns all routing state: which socket is an environment's live socket, which
harness socket owns each stream, and the grace timers that decide when a missing peer
is given up on. It never touches payloads: every binary message goes through
:func:`~exec_server.relay.frame_codec.decode_route` only to learn ``stream_id``, the
body kind and the capability flag (and to validate the frame, without copying the
payload), then the *same bytes* are queued to the peer.

Rules (stream ids are scoped to one environment id):

* **Protocol errors end the socket.** An invalid frame (undecodable, truncated, absurd
  lengths, failing validation) raises :class:`~exec_server.rendezvous.errors.SocketProtocolError`
  (close code 1002, or 1009 for a frame over the size limit); the server closes that
  socket with a short reason and counts it. Other sockets and streams are untouched.
* **Ownership.** A stream belongs to the harness socket that first sent a frame for it
  (Codex's harness sends ``resume{next_seq: 0}`` first). A frame for it from any other
  socket is refused: not forwarded, and answered with
  ``reset{stream_owned_by_another_harness}`` (a refused ``reset`` is not answered). The
  one exception is a reconnect: a socket admitted *after* the owner, with the owner's URL
  nonce (the same signed URL: the same harness credential), that sends ``resume`` for
  the stream takes it over, as our harness does after losing its socket. The previous
  socket's claim ends then (it gets ``reset{stream_reclaimed}``, in case it is still
  alive). This also covers a harness that reconnects before the rendezvous noticed its
  old socket die (half-open TCP).
* **Harness loss.** When the owner socket goes away, its streams wait ``harness_grace_s``
  for a socket with the same nonce to resume them; environment frames for them meanwhile
  are dropped (``harness_offline``; reliable endpoints retransmit). When the grace ends,
  the environment gets ``reset{harness_offline}`` for each.
* **Environment loss.** One live socket per environment id: a new one replaces the old
  (closed with code 4000), and the streams route to the new one. With no socket, harness
  frames are dropped (``environment_offline``) for ``environment_grace_s``; when the
  grace ends, each owner gets ``reset{environment_offline}`` for its streams. A harness
  frame for an environment that is offline and *not* in grace is answered with that
  reset at once. Grace also starts when an environment registers without a socket and,
  for every environment, at router start (a restarted rendezvous waits for its
  environments to come back before failing harnesses). Harness sockets that negotiated
  the control subprotocol (:mod:`~exec_server.relay.control`) are told at once that the
  environment is offline and being waited for, and again when it is back.
* **Resets** end the stream in the router after being forwarded, in either direction. The
  resets the router sends itself mirror the capability flag of the harness's frames on
  the stream (:func:`~exec_server.relay.frame_codec.reset_for_peer`).
* **Environment frames** go to the owning harness socket; unknown streams are dropped.

Back-pressure and loss: every socket has an outbound queue drained by its own writer
task, so one slow harness never stalls the environment's reader or the other streams.

* A frame from a *reliable* sender (capability flag set: it retransmits) that does not
  fit the harness socket's queue (``max_queue_bytes`` / ``max_queue_frames``) is dropped
  (``harness_queue_full``); the sender repairs the loss.
* A frame from a *legacy* sender (no flag: a Codex environment, or ours answering a Codex
  harness) is never dropped. It is queued, counted against its stream; once the stream
  holds ``stream_pause_bytes`` (or the socket ``max_queue_bytes``), an environment that
  negotiated the control subprotocol is told to pause that stream's output (per stream:
  its other streams keep flowing) and to resume it once the harness drained half of it.
  A stream whose harness stays too slow (queued bytes over ``max_stream_buffer_bytes``,
  the socket over ``max_socket_buffer_bytes``, or paused for ``slow_harness_timeout_s``)
  is ended explicitly: the harness gets every frame queued before the cut, then
  ``reset{harness_too_slow}``, and the environment gets the same reset. Never a gap.
* A full *environment* queue makes the harness readers wait (TCP back-pressure to the
  harnesses), since nothing else depends on that reader.

An empty queue accepts any frame, so one frame larger than a bound (legacy peers send up
to 64 MiB) still passes. Memory per harness socket is bounded by
``max_socket_buffer_bytes`` plus one frame.

A node of a rendezvous cluster routes with
:class:`~exec_server.rendezvous.cluster_router.ClusterRouter`: these same rules, with
other nodes as peers and the ownership records shared; the hooks it overrides here
(``_route_created``, ``_adopt_stream``, ``claim``, ``_pause_output``...) do nothing
on a single node.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..relay.control import (
    ControlMessage,
    PauseOutput,
    PeerOffline,
    PeerOnline,
    ResumeOutput,
    encode_control,
)
from ..relay.errors import InvalidFrame, InvalidFrameReason
from ..relay.frame_codec import INBOUND_LIMITS, FrameLimits, decode_route, reset_for_peer
from .errors import SocketProtocolError
from .url_signing import UrlRole

__all__ = [
    "DEFAULT_ENVIRONMENT_GRACE_S",
    "DEFAULT_HARNESS_GRACE_S",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "DEFAULT_MAX_SOCKET_BUFFER_BYTES",
    "DEFAULT_MAX_STREAMS_PER_ENVIRONMENT",
    "DEFAULT_MAX_STREAM_BUFFER_BYTES",
    "DEFAULT_SLOW_HARNESS_TIMEOUT_S",
    "DEFAULT_STREAM_PAUSE_BYTES",
    "PROTOCOL_ERROR_CLOSE_CODE",
    "REPLACED_CLOSE_CODE",
    "TOO_BIG_CLOSE_CODE",
    "UNSUPPORTED_DATA_CLOSE_CODE",
    "Direction",
    "DropReason",
    "FrameSink",
    "ProtocolErrorReason",
    "ResetReason",
    "Router",
    "RouterConfig",
    "RouterStats",
    "SocketPeer",
]

log = logging.getLogger(__name__)

DEFAULT_ENVIRONMENT_GRACE_S = 30.0
"""Seconds an environment's streams wait for it to reconnect."""

DEFAULT_HARNESS_GRACE_S = 30.0
"""Seconds a harness's streams wait for a socket with the same URL nonce."""

DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
"""Outbound bytes queued per socket before a reliable sender's frames are dropped
(harness), the harness readers wait (environment), or legacy streams are paused."""

DEFAULT_MAX_QUEUE_FRAMES = 8192
"""Outbound frames queued per socket, same policy as the byte bound (reliable frames)."""

DEFAULT_STREAM_PAUSE_BYTES = 2 * 1024 * 1024
"""Queued bytes of one legacy stream at which its environment is asked to pause it."""

DEFAULT_MAX_STREAM_BUFFER_BYTES = 32 * 1024 * 1024
"""Queued bytes of one legacy stream beyond which it is reset (``harness_too_slow``)."""

DEFAULT_MAX_SOCKET_BUFFER_BYTES = 64 * 1024 * 1024
"""Queued bytes of one harness socket beyond which the legacy stream adding to them is
reset (``harness_too_slow``)."""

DEFAULT_SLOW_HARNESS_TIMEOUT_S = 60.0
"""Longest a legacy stream stays paused for its harness before it is reset."""

DEFAULT_MAX_STREAMS_PER_ENVIRONMENT = 4096
"""Routed streams per environment id (matches the environment's own stream limit)."""

SOCKET_CLOSE_TIMEOUT_S = 2.0
"""Longest wait for a websocket close handshake before the transport is cut."""

REPLACED_CLOSE_CODE = 4000
"""Websocket close code sent to an environment socket replaced by a newer one."""

PROTOCOL_ERROR_CLOSE_CODE = 1002
"""Websocket close code for an invalid relay frame (RFC 6455 protocol error)."""

UNSUPPORTED_DATA_CLOSE_CODE = 1003
"""Websocket close code for a text message: the relay is binary only."""

TOO_BIG_CLOSE_CODE = 1009
"""Websocket close code for a message over the size limit."""


class Direction(StrEnum):
    HARNESS_TO_ENVIRONMENT = "harness_to_environment"
    ENVIRONMENT_TO_HARNESS = "environment_to_harness"


class DropReason(StrEnum):
    """Reasons a well-formed frame was not forwarded."""

    UNKNOWN_STREAM = "unknown_stream"
    """An environment frame for a stream no harness owns."""
    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    """A harness frame for a stream another harness socket owns."""
    ENVIRONMENT_OFFLINE = "environment_offline"
    """A harness frame while its environment has no socket."""
    HARNESS_OFFLINE = "harness_offline"
    """An environment frame for a stream whose owner socket is gone (within grace)."""
    HARNESS_QUEUE_FULL = "harness_queue_full"
    """A reliable sender's frame that did not fit the owning harness socket's queue."""
    HARNESS_TOO_SLOW = "harness_too_slow"
    """A legacy frame past the bounds of a slow harness: the stream was reset instead."""
    TOO_MANY_STREAMS = "too_many_streams"
    """A new stream over ``max_streams_per_environment``."""
    REPLACED_SOCKET = "replaced_socket"
    """A frame from an environment socket that a newer one has replaced."""
    REFUSED_FROM_NODE = "refused_from_node"
    """Cluster: a frame another node forwarded that the shared records do not allow
    (forged, or from a node that lost the stream or the environment)."""
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    """Cluster: a new stream could not be recorded in the shared state."""


class ResetReason(StrEnum):
    """Reasons of the resets the router itself sends (part of the wire contract)."""

    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    STREAM_RECLAIMED = "stream_reclaimed"
    HARNESS_OFFLINE = "harness_offline"
    ENVIRONMENT_OFFLINE = "environment_offline"
    TOO_MANY_STREAMS = "too_many_streams"
    HARNESS_TOO_SLOW = "harness_too_slow"
    RELAY_ROUTE_LOST = "relay_route_lost"
    """Cluster: frames between two nodes were lost (a legacy stream cannot recover)."""
    CLUSTER_UNAVAILABLE = "rendezvous_unavailable"
    """Cluster: the shared state did not answer while the stream was being claimed."""


class ProtocolErrorReason(StrEnum):
    """Why a socket was closed for a protocol error, besides ``InvalidFrameReason``."""

    TEXT_FRAME = "text_frame"
    """A websocket text message; the relay is binary only."""
    OVERSIZE = "oversize"
    """A message over the size limit (``InvalidFrameReason.OVERSIZE`` has the same value)."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    environment_grace_s: float = DEFAULT_ENVIRONMENT_GRACE_S
    harness_grace_s: float = DEFAULT_HARNESS_GRACE_S
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES
    stream_pause_bytes: int = DEFAULT_STREAM_PAUSE_BYTES
    max_stream_buffer_bytes: int = DEFAULT_MAX_STREAM_BUFFER_BYTES
    max_socket_buffer_bytes: int = DEFAULT_MAX_SOCKET_BUFFER_BYTES
    slow_harness_timeout_s: float = DEFAULT_SLOW_HARNESS_TIMEOUT_S
    max_streams_per_environment: int = DEFAULT_MAX_STREAMS_PER_ENVIRONMENT
    frame_limits: FrameLimits = INBOUND_LIMITS

    def __post_init__(self) -> None:
        if self.environment_grace_s < 0 or self.harness_grace_s < 0:
            raise ValueError("grace periods must not be negative")
        if self.max_queue_bytes <= 0 or self.max_queue_frames <= 0:
            raise ValueError("queue bounds must be positive")
        if not 0 < self.stream_pause_bytes <= self.max_stream_buffer_bytes:
            raise ValueError("need 0 < stream_pause_bytes <= max_stream_buffer_bytes")
        if self.max_socket_buffer_bytes < self.max_queue_bytes:
            raise ValueError("max_socket_buffer_bytes must be at least max_queue_bytes")
        if self.slow_harness_timeout_s <= 0:
            raise ValueError("slow_harness_timeout_s must be positive")
        if self.max_streams_per_environment <= 0:
            raise ValueError("max_streams_per_environment must be positive")


@dataclass
class RouterStats:
    """Monotonic counters; :mod:`~exec_server.rendezvous.metrics` exports them."""

    frames_routed: Counter[str] = field(default_factory=Counter)
    """By :class:`Direction`."""
    bytes_routed: Counter[str] = field(default_factory=Counter)
    """By :class:`Direction`; websocket message bytes."""
    dropped: Counter[str] = field(default_factory=Counter)
    """By :class:`DropReason`."""
    resets_sent: Counter[str] = field(default_factory=Counter)
    """By :class:`ResetReason`."""
    protocol_errors: Counter[str] = field(default_factory=Counter)
    """Sockets closed for a protocol error, by :class:`ProtocolErrorReason` or
    ``InvalidFrameReason`` value."""
    sockets_accepted: Counter[str] = field(default_factory=Counter)
    """By role."""
    reclaims: int = 0
    """Streams taken over by a newer socket with the owner's nonce."""
    pauses: int = 0
    """Legacy streams an environment was asked to pause for a slow harness."""


class FrameSink(Protocol):
    """The part of a websocket the router writes to (aiohttp's ``WebSocketResponse``)."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


_SentCallback = Callable[["SocketPeer", "_StreamRoute", int], None]

_socket_ids = itertools.count(1)


class SocketPeer:
    """One admitted relay websocket: its grant, outbound queue and writer task.

    Queue entries are binary frames or control texts, each with the legacy stream it is
    counted against (``None`` for the rest); the router hears of every counted frame
    written (``on_sent``), which is how paused streams are resumed.
    """

    remote = False
    """True for a peer standing for another rendezvous node (cluster)."""

    def __init__(
        self,
        sink: FrameSink,
        role: UrlRole,
        environment_id: str,
        nonce: str,
        *,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES,
        label: str = "",
        control: bool = False,
    ) -> None:
        self.sink = sink
        self.role = role
        self.environment_id = environment_id
        self.nonce = nonce
        self.label = label or f"{role.value} socket for {environment_id}"
        self.control = control
        """The socket negotiated :data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL`."""
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_frames = max_queue_frames
        self.serial = 0
        """Admission order (set by :meth:`Router.attach`): only a newer socket reclaims."""
        self.socket_id = f"s{next(_socket_ids)}"
        """Unique in this process; names the socket in the cluster's shared records."""
        self.queued_bytes = 0
        self.closed = False
        self.owned: set[str] = set()
        """Harness sockets: ids of the streams this socket owns."""
        self.paused: set[_StreamRoute] = set()
        """Harness sockets: legacy streams paused because this socket is slow."""
        self.overflow_logged = False
        self.on_sent: _SentCallback | None = None
        self._queue: deque[tuple[bytes | str, _StreamRoute | None]] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SocketPeer {self.label}>"

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the writer task (call once, from the event loop)."""
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_loop())

    def has_room(self) -> bool:
        return len(self._queue) < self.max_queue_frames and self.queued_bytes < self.max_queue_bytes

    def try_enqueue(self, data: bytes) -> bool:
        """Queue ``data`` unless that would exceed a bound (an empty queue takes any
        frame); False when refused or closed."""
        if self.closed:
            return False
        queue = self._queue
        if queue and (
            len(queue) >= self.max_queue_frames
            or self.queued_bytes + len(data) > self.max_queue_bytes
        ):
            return False
        self._push(data, None)
        return True

    def force_enqueue(self, data: bytes | str, stream: _StreamRoute | None = None) -> bool:
        """Queue ``data`` regardless of the bounds (control frames, frames whose sender
        already waited for room, legacy frames the router bounds itself), counted against
        ``stream`` when given; False only when closed."""
        if self.closed:
            return False
        self._push(data, stream)
        return True

    def send_control(self, message: ControlMessage) -> None:
        """Queue a control message, if this socket negotiated them."""
        if self.control:
            self.force_enqueue(encode_control(message))

    def _push(self, data: bytes | str, stream: _StreamRoute | None) -> None:
        self._queue.append((data, stream))
        size = len(data)
        self.queued_bytes += size
        if stream is not None:
            stream.queued_bytes += size
        if not self.has_room():
            self._room.clear()
        self._wake.set()

    async def wait_for_room(self) -> None:
        """Return once the queue is below its bounds or the socket is closed."""
        while not self.closed and not self.has_room():
            self._room.clear()
            await self._room.wait()

    async def _write_loop(self) -> None:
        queue = self._queue
        sink = self.sink
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                data, stream = queue.popleft()
                size = len(data)
                self.queued_bytes -= size
                if stream is not None:
                    stream.queued_bytes -= size
                if not self._room.is_set() and self.has_room():
                    self._room.set()
                if type(data) is bytes:
                    await sink.send_bytes(data)
                else:
                    assert isinstance(data, str)
                    await sink.send_str(data)
                if stream is not None and self.on_sent is not None:
                    self.on_sent(self, stream, size)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket is gone; its reader sees the close next
            log.debug("%s: write failed: %s", self.label, exc)
            self._mark_closed()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                    await self.sink.close()

    def _mark_closed(self) -> None:
        self.closed = True
        for data, stream in self._queue:
            if stream is not None:
                stream.queued_bytes -= len(data)
        self._queue.clear()
        self.queued_bytes = 0
        self._room.set()
        self._wake.set()

    async def aclose(self, *, code: int = 1000, message: bytes = b"") -> None:
        """Drop queued frames, stop the writer and close the websocket."""
        self._mark_closed()
        writer = self._writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
                await self.sink.close(code=code, message=message)


@dataclass(eq=False, slots=True)
class _StreamRoute:
    stream_id: str
    nonce: str
    """Nonce of the URL that claimed the stream; only it may re-claim."""
    owner: SocketPeer | None
    reliable: bool
    """The harness's frames carry the capability flag (mirrored in our resets)."""
    orphan_timer: asyncio.TimerHandle | None = None
    queued_bytes: int = 0
    """Legacy frames of this stream queued on a harness socket."""
    paused: bool = False
    """The environment was asked to pause this stream's output."""
    stall_timer: asyncio.TimerHandle | None = None
    """Running while paused: when it fires the stream is reset (``harness_too_slow``)."""
    ended: bool = False
    remote: bool = False
    """Cluster: the owner is (or, while orphaned, was) a harness on another node."""
    remote_paused: bool = False
    """Cluster: the harness's node asked for this stream's output to be paused."""
    legacy_seen: bool = False
    """A frame without the capability flag was routed: frames lost between nodes
    cannot be repaired, the stream must be reset."""


@dataclass(eq=False, slots=True)
class _EnvironmentRoute:
    environment_id: str
    socket: SocketPeer | None = None
    streams: dict[str, _StreamRoute] = field(default_factory=dict)
    harnesses: set[SocketPeer] = field(default_factory=set)
    grace_timer: asyncio.TimerHandle | None = None
    """Running while the environment is offline but expected back."""
    grace_deadline: float = 0.0
    """Loop time at which ``grace_timer`` fires."""
    offline_told: bool = False
    """Harness sockets were told the environment is offline (so tell them it is back)."""


class Router:
    """Routing state for every environment id (see the module docstring)."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.stats = RouterStats()
        self._routes: dict[str, _EnvironmentRoute] = {}
        self._peers: set[SocketPeer] = set()
        self._serial = 0
        self._loop = asyncio.get_running_loop()
        self._startup_grace_until = self._loop.time() + self.config.environment_grace_s

    # --- queries ---------------------------------------------------------------------

    @property
    def peers(self) -> frozenset[SocketPeer]:
        return frozenset(self._peers)

    def is_online(self, environment_id: str) -> bool:
        route = self._routes.get(environment_id)
        return route is not None and route.socket is not None

    def stream_count(self, environment_id: str | None = None) -> int:
        if environment_id is None:
            return sum(len(route.streams) for route in self._routes.values())
        route = self._routes.get(environment_id)
        return len(route.streams) if route else 0

    def online_environments(self) -> int:
        return sum(1 for route in self._routes.values() if route.socket is not None)

    def route_count(self) -> int:
        """Environment ids with any routing state (sockets, streams or a grace timer)."""
        return len(self._routes)

    # --- sockets ---------------------------------------------------------------------

    def new_peer(
        self,
        sink: FrameSink,
        role: UrlRole,
        environment_id: str,
        nonce: str,
        label: str = "",
        *,
        control: bool = False,
    ) -> SocketPeer:
        """A peer with this router's queue bounds (not attached yet)."""
        return SocketPeer(
            sink,
            role,
            environment_id,
            nonce,
            max_queue_bytes=self.config.max_queue_bytes,
            max_queue_frames=self.config.max_queue_frames,
            label=label,
            control=control,
        )

    def attach(self, peer: SocketPeer) -> SocketPeer | None:
        """Admit a socket and start its writer. For an environment socket, returns the
        socket it replaces (the caller closes it with :data:`REPLACED_CLOSE_CODE`)."""
        self._serial += 1
        peer.serial = self._serial
        peer.on_sent = self._on_sent
        peer.start()
        self._peers.add(peer)
        self.stats.sockets_accepted[peer.role.value] += 1
        route = self._route(peer.environment_id)
        if peer.role is UrlRole.HARNESS:
            route.harnesses.add(peer)
            if route.socket is None and route.grace_timer is not None and peer.control:
                remaining = max(0.0, route.grace_deadline - self._loop.time())
                peer.send_control(PeerOffline("environment", remaining))
                route.offline_told = True
            return None
        old = route.socket
        route.socket = peer
        self._cancel_grace(route)
        if old is not None:
            log.info("environment %s: a new socket replaces the old one", peer.environment_id)
        for stream in route.streams.values():
            if stream.paused:
                peer.send_control(PauseOutput(stream.stream_id))
        if route.offline_told:
            route.offline_told = False
            for harness in route.harnesses:
                harness.send_control(PeerOnline("environment"))
        return old

    def detach(self, peer: SocketPeer) -> None:
        """Forget a socket whose reader has ended; start the grace periods it implies."""
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        route = self._routes.get(peer.environment_id)
        if route is None:
            return
        if peer.role is UrlRole.HARNESS:
            route.harnesses.discard(peer)
            for stream_id in peer.owned:
                stream = route.streams.get(stream_id)
                if stream is not None and stream.owner is peer:
                    # A paused stream stays paused while orphaned: its output would
                    # only be dropped (harness_offline) until someone resumes it.
                    stream.owner = None
                    stream.orphan_timer = self._loop.call_later(
                        self.config.harness_grace_s, self._orphan_expired, route, stream
                    )
            peer.owned.clear()
            peer.paused.clear()
        elif route.socket is peer:
            route.socket = None
            log.info(
                "environment %s went offline; its %d streams wait %.1fs",
                peer.environment_id,
                len(route.streams),
                self.config.environment_grace_s,
            )
            self._start_grace(route, self.config.environment_grace_s)
            self._tell_offline(route)
        self._maybe_forget(route)

    def expect_environment(self, environment_id: str) -> None:
        """An environment registered: if it has no socket, hold its harnesses' frames
        (instead of resetting them) for a grace period while it connects."""
        route = self._route(environment_id)
        if route.socket is None:
            self._start_grace(route, self.config.environment_grace_s)

    def close(self) -> None:
        """Cancel every timer (sockets are closed by their owner)."""
        for route in self._routes.values():
            self._cancel_grace(route)
            for stream in route.streams.values():
                self._cancel_stream_timers(stream)
        self._routes.clear()

    async def aclose(self) -> None:
        """:meth:`close`, and wait for the router's own tasks (a cluster router has some)."""
        self.close()

    # --- frames ----------------------------------------------------------------------

    def on_environment_message(self, peer: SocketPeer, data: bytes) -> None:
        """A binary message from an environment socket; raises
        :class:`~exec_server.rendezvous.errors.SocketProtocolError` for an invalid frame."""
        route = self._routes.get(peer.environment_id)
        if route is None or route.socket is not peer:
            self.stats.dropped[DropReason.REPLACED_SOCKET] += 1
            return
        stream_id, kind, flagged = self._decode(data)
        stream = route.streams.get(stream_id)
        if stream is None:
            stream = self._adopt_stream(route, stream_id, flagged)
            if stream is None:
                self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
                return
        self._to_harness(route, stream, kind, flagged, data)

    def _adopt_stream(
        self, route: _EnvironmentRoute, stream_id: str, flagged: bool
    ) -> _StreamRoute | None:
        """Hook: an environment frame for a stream this router does not know; a route
        for it (the cluster router finds its owner on another node), or None to drop it."""
        return None

    def _to_harness(
        self, route: _EnvironmentRoute, stream: _StreamRoute, kind: str, flagged: bool, data: bytes
    ) -> None:
        """Queue an environment frame to the stream's owner."""
        owner = stream.owner
        if kind == "reset":
            self._end_stream(route, stream)
        if owner is None:
            self.stats.dropped[DropReason.HARNESS_OFFLINE] += 1
            return
        if flagged:
            if not owner.try_enqueue(data):
                self._harness_queue_full(owner)
                return
        else:
            stream.legacy_seen = True
            if not self._enqueue_legacy(route, stream, owner, data):
                return
        self.stats.frames_routed[Direction.ENVIRONMENT_TO_HARNESS] += 1
        self.stats.bytes_routed[Direction.ENVIRONMENT_TO_HARNESS] += len(data)

    async def claim(self, peer: SocketPeer) -> int | None:
        """Before :meth:`attach` of an environment socket: record it as the environment's
        holder. None when admitted; otherwise the websocket close code to refuse it with
        (a cluster node whose newer socket elsewhere won, or whose shared state did not
        answer). Always None on a single node."""
        return None

    async def on_harness_message(self, peer: SocketPeer, data: bytes) -> None:
        """A binary message from a harness socket (waits while the environment's
        outbound queue is full); raises
        :class:`~exec_server.rendezvous.errors.SocketProtocolError` for an invalid frame."""
        stream_id, kind, flagged = self._decode(data)
        route = self._routes.get(peer.environment_id)
        environment = route.socket if route is not None else None
        if environment is not None and not environment.has_room():
            await environment.wait_for_room()
        self._route_from_harness(peer, stream_id, kind, flagged, data)

    def _route_from_harness(
        self, peer: SocketPeer, stream_id: str, kind: str, flagged: bool, data: bytes
    ) -> None:
        route = self._route(peer.environment_id)
        stream = route.streams.get(stream_id)
        is_reset = kind == "reset"
        if stream is None:
            if not is_reset:
                if route.socket is None and route.grace_timer is None:
                    self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
                    self._reply_reset(peer, stream_id, ResetReason.ENVIRONMENT_OFFLINE, flagged)
                    return
                if len(route.streams) >= self.config.max_streams_per_environment:
                    self.stats.dropped[DropReason.TOO_MANY_STREAMS] += 1
                    self._reply_reset(peer, stream_id, ResetReason.TOO_MANY_STREAMS, flagged)
                    return
                stream = _StreamRoute(stream_id, peer.nonce, peer, flagged)
                route.streams[stream_id] = stream
                peer.owned.add(stream_id)
        elif stream.owner is not peer:
            if not self._may_reclaim(stream, peer, kind):
                self.stats.dropped[DropReason.STREAM_OWNED_BY_ANOTHER_HARNESS] += 1
                if not is_reset:
                    self._reply_reset(
                        peer, stream_id, ResetReason.STREAM_OWNED_BY_ANOTHER_HARNESS, flagged
                    )
                return
            self._reclaim(route, stream, peer)
        if stream is not None and is_reset:
            self._end_stream(route, stream)
        environment = route.socket
        if environment is None or not environment.force_enqueue(data):
            self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
            return
        self.stats.frames_routed[Direction.HARNESS_TO_ENVIRONMENT] += 1
        self.stats.bytes_routed[Direction.HARNESS_TO_ENVIRONMENT] += len(data)
        if is_reset:
            self._maybe_forget(route)

    # --- internals -------------------------------------------------------------------

    def _decode(self, data: bytes) -> tuple[str, str, bool]:
        """``(stream_id, body kind, capability flag)`` of a valid frame."""
        try:
            return decode_route(data, self.config.frame_limits)
        except InvalidFrame as exc:
            oversize = exc.reason is InvalidFrameReason.OVERSIZE
            raise SocketProtocolError(
                TOO_BIG_CLOSE_CODE if oversize else PROTOCOL_ERROR_CLOSE_CODE,
                exc.reason.value,
                f"invalid relay frame: {exc.reason.value}",
            ) from None

    def _route(self, environment_id: str) -> _EnvironmentRoute:
        route = self._routes.get(environment_id)
        if route is None:
            route = self._routes[environment_id] = _EnvironmentRoute(environment_id)
            remaining = self._startup_grace_until - self._loop.time()
            if remaining > 0:
                self._start_grace(route, remaining)
            self._route_created(route)
        return route

    def _route_created(self, route: _EnvironmentRoute) -> None:
        """Hook: a route was just created (the cluster router looks up its holder)."""

    @staticmethod
    def _may_reclaim(stream: _StreamRoute, peer: SocketPeer, kind: str) -> bool:
        """A newer socket of the owner's credential resuming the stream (see the rules)."""
        return (
            kind == "resume"
            and stream.nonce == peer.nonce
            and (stream.owner is None or peer.serial > stream.owner.serial)
        )

    def _reclaim(self, route: _EnvironmentRoute, stream: _StreamRoute, peer: SocketPeer) -> None:
        self._unpause(route, stream)  # the new socket's queue is empty
        old = stream.owner
        if old is not None:
            old.owned.discard(stream.stream_id)
            self._send_reset(old, stream, ResetReason.STREAM_RECLAIMED)
        if stream.orphan_timer is not None:
            stream.orphan_timer.cancel()
            stream.orphan_timer = None
        stream.owner = peer
        peer.owned.add(stream.stream_id)
        self.stats.reclaims += 1

    def _harness_queue_full(self, owner: SocketPeer) -> None:
        self.stats.dropped[DropReason.HARNESS_QUEUE_FULL] += 1
        if not owner.overflow_logged:
            owner.overflow_logged = True
            log.warning(
                "%s is not reading fast enough: its outbound queue is full "
                "(%d frames, %d bytes); dropping reliable frames for it (they are resent)",
                owner.label,
                owner.queued_frames,
                owner.queued_bytes,
            )

    def _enqueue_legacy(
        self, route: _EnvironmentRoute, stream: _StreamRoute, owner: SocketPeer, data: bytes
    ) -> bool:
        """Queue a frame that cannot be resent: never dropped, bounded per stream and per
        socket; False when the stream was cut instead (the frame goes nowhere, and both
        ends get ``reset{harness_too_slow}``)."""
        cfg = self.config
        size = len(data)
        if (stream.queued_bytes and stream.queued_bytes + size > cfg.max_stream_buffer_bytes) or (
            owner.queued_bytes and owner.queued_bytes + size > cfg.max_socket_buffer_bytes
        ):
            self.stats.dropped[DropReason.HARNESS_TOO_SLOW] += 1
            self._cut_slow_stream(
                route,
                stream,
                f"{stream.queued_bytes} bytes queued for the stream, "
                f"{owner.queued_bytes} for the socket",
            )
            return False
        owner.force_enqueue(data, stream)
        if not stream.paused and (
            stream.queued_bytes >= cfg.stream_pause_bytes
            or owner.queued_bytes >= cfg.max_queue_bytes
        ):
            self._pause(route, stream, owner)
        return True

    def _pause(self, route: _EnvironmentRoute, stream: _StreamRoute, owner: SocketPeer) -> None:
        stream.paused = True
        owner.paused.add(stream)
        self.stats.pauses += 1
        self._pause_output(route, stream)
        stream.stall_timer = self._loop.call_later(
            self.config.slow_harness_timeout_s, self._stall_expired, route, stream
        )

    def _unpause(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.paused:
            return
        stream.paused = False
        if stream.owner is not None:
            stream.owner.paused.discard(stream)
        if stream.stall_timer is not None:
            stream.stall_timer.cancel()
            stream.stall_timer = None
        if not stream.ended:
            self._resume_output(route, stream)

    def _pause_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        """Ask the environment to pause one stream's output."""
        if route.socket is not None:
            route.socket.send_control(PauseOutput(stream.stream_id))

    def _resume_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if route.socket is not None:
            route.socket.send_control(ResumeOutput(stream.stream_id))

    def _on_sent(self, peer: SocketPeer, stream: _StreamRoute, size: int) -> None:
        """A legacy frame of ``stream`` (``size`` bytes, no longer counted in its queued
        bytes) was written to ``peer``: resume paused streams
        once both the stream and the socket drained to half their pause thresholds."""
        paused = peer.paused
        if not paused:
            return
        cfg = self.config
        if peer.queued_bytes > cfg.max_queue_bytes // 2:
            return
        route = self._routes.get(peer.environment_id)
        if route is None:
            return
        if peer.queued_bytes + size > cfg.max_queue_bytes // 2:  # the socket just got there
            candidates = list(paused)
        elif stream in paused:
            candidates = [stream]
        else:
            return
        for candidate in candidates:
            if candidate.queued_bytes <= cfg.stream_pause_bytes // 2:
                self._unpause(route, candidate)

    def _stall_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.stall_timer = None
        if stream.paused and route.streams.get(stream.stream_id) is stream:
            self._cut_slow_stream(
                route,
                stream,
                f"paused for {self.config.slow_harness_timeout_s:g}s without catching up",
            )

    def _cut_slow_stream(self, route: _EnvironmentRoute, stream: _StreamRoute, why: str) -> None:
        owner = stream.owner
        log.warning(
            "%s is too slow for stream %s (%s); resetting the stream (harness_too_slow)",
            owner.label if owner is not None else "a harness",
            stream.stream_id,
            why,
        )
        self._end_stream(route, stream)
        if route.socket is not None:
            self._send_reset(route.socket, stream, ResetReason.HARNESS_TOO_SLOW)
        if owner is not None:
            # After every frame already queued for it: the harness sees all it was sent,
            # then the reset, never a gap.
            self._send_reset(owner, stream, ResetReason.HARNESS_TOO_SLOW)
        self._maybe_forget(route)

    @staticmethod
    def _cancel_stream_timers(stream: _StreamRoute) -> None:
        for timer in (stream.orphan_timer, stream.stall_timer):
            if timer is not None:
                timer.cancel()
        stream.orphan_timer = stream.stall_timer = None

    def _end_stream(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.ended = True
        if route.streams.get(stream.stream_id) is stream:
            del route.streams[stream.stream_id]
        if stream.owner is not None:
            stream.owner.owned.discard(stream.stream_id)
            stream.owner.paused.discard(stream)
        stream.paused = False
        self._cancel_stream_timers(stream)

    def _orphan_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.orphan_timer = None
        if stream.owner is not None or route.streams.get(stream.stream_id) is not stream:
            return
        self._end_stream(route, stream)
        if route.socket is not None:
            self._send_reset(route.socket, stream, ResetReason.HARNESS_OFFLINE)
        self._maybe_forget(route)

    def _start_grace(self, route: _EnvironmentRoute, grace_s: float) -> None:
        deadline = self._loop.time() + grace_s
        if route.grace_timer is not None:
            if route.grace_deadline >= deadline:
                return
            route.grace_timer.cancel()
        route.grace_deadline = deadline
        route.grace_timer = self._loop.call_at(deadline, self._grace_expired, route)

    def _cancel_grace(self, route: _EnvironmentRoute) -> None:
        if route.grace_timer is not None:
            route.grace_timer.cancel()
            route.grace_timer = None

    def _tell_offline(self, route: _EnvironmentRoute) -> None:
        """Tell the harness sockets that negotiated control messages that the
        environment is offline and how long it is waited for."""
        remaining = max(0.0, route.grace_deadline - self._loop.time())
        for harness in route.harnesses:
            if harness.control:
                route.offline_told = True
                harness.send_control(PeerOffline("environment", remaining))

    def _grace_expired(self, route: _EnvironmentRoute) -> None:
        route.grace_timer = None
        if route.socket is not None:
            return
        streams = list(route.streams.values())
        if streams:
            log.info(
                "environment %s did not come back; resetting its %d streams",
                route.environment_id,
                len(streams),
            )
        for stream in streams:
            self._end_stream(route, stream)
            if stream.owner is not None:
                self._send_reset(stream.owner, stream, ResetReason.ENVIRONMENT_OFFLINE)
        self._maybe_forget(route)

    def _send_reset(self, peer: SocketPeer, stream: _StreamRoute, reason: ResetReason) -> None:
        frame = reset_for_peer(stream.stream_id, reason.value, reliable=stream.reliable)
        if peer.force_enqueue(frame):
            self.stats.resets_sent[reason.value] += 1

    def _reply_reset(
        self, peer: SocketPeer, stream_id: str, reason: ResetReason, reliable: bool
    ) -> None:
        """A reset answering a refused frame: bounded by the offender's own queue."""
        if peer.try_enqueue(reset_for_peer(stream_id, reason.value, reliable=reliable)):
            self.stats.resets_sent[reason.value] += 1

    def _maybe_forget(self, route: _EnvironmentRoute) -> None:
        if (
            route.socket is None
            and not route.streams
            and not route.harnesses
            and route.grace_timer is None
            and self._routes.get(route.environment_id) is route
        ):
            del self._routes[route.environment_id]
