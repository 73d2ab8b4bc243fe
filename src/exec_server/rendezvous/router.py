"""Routes relay frames between one environment socket and its harness sockets.

The router owns all routing state: which socket is an environment's live socket, which
harness socket owns each stream, and the grace timers that decide when a missing peer
is given up on. It never touches payloads: every binary message goes through
:func:`~exec_server.relay.frame_codec.decode_route` only to learn ``stream_id`` and the
body kind (and to drop invalid frames: the same validation as ``decode_frame``, without
copying the payload), then the *same bytes* are queued to the peer.

Rules (stream ids are scoped to one environment id):

* **Ownership.** A stream belongs to the harness socket that first sent a frame for it
  (Codex's harness sends ``resume{next_seq: 0}`` first). A frame for it from another
  harness socket is dropped (``stream_owned_by_another_harness``) and answered with
  ``reset{stream_owned_by_another_harness}`` to the offender, unless the sender was
  admitted with the owner's URL nonce: the same signed URL is the same principal, so
  that socket takes the stream over. This covers a harness that reconnects before the
  rendezvous has noticed its previous socket die (half-open TCP, close racing the new
  upgrade), which would otherwise lose its stream for up to the ping timeout.
* **Harness loss.** When the owner socket goes away, its streams wait ``harness_grace_s``
  for a socket with the same nonce; environment frames for them meanwhile are dropped
  (``harness_offline``; reliable endpoints retransmit). When the grace ends, the
  environment gets ``reset{harness_offline}`` for each.
* **Environment loss.** One live socket per environment id: a new one replaces the old
  (closed with code 4000), and the streams route to the new one. With no socket, harness
  frames are dropped (``environment_offline``) for ``environment_grace_s``; when the
  grace ends, each owner gets ``reset{environment_offline}`` for its streams. A harness
  frame for an environment that is offline and *not* in grace is answered with that
  reset at once. Grace also starts when an environment registers without a socket and,
  for every environment, at router start (a restarted rendezvous waits for its
  environments to come back before failing harnesses).
* **Resets** end the stream in the router after being forwarded, in either direction.
* **Environment frames** go to the owning harness socket; unknown streams are dropped.

Back-pressure: every socket has a bounded outbound queue (``max_queue_bytes`` and
``max_queue_frames``) drained by its own writer task. A full *harness* queue drops the
frame (``harness_queue_full``, logged once per socket), so one slow harness never
stalls the environment's reader or the other streams. A full *environment* queue makes
the harness readers wait (TCP back-pressure to the harnesses) instead, since nothing
else depends on that reader. A frame is always accepted by an empty queue, so one frame
larger than ``max_queue_bytes`` (legacy peers send up to 64 MiB) still passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from ..relay.errors import InvalidFrame
from ..relay.frame_codec import (
    INBOUND_LIMITS,
    BodyKind,
    FrameLimits,
    decode_route,
    encode_frame,
    reset_frame,
)
from .url_signing import UrlRole

__all__ = [
    "DEFAULT_ENVIRONMENT_GRACE_S",
    "DEFAULT_HARNESS_GRACE_S",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_FRAMES",
    "DEFAULT_MAX_STREAMS_PER_ENVIRONMENT",
    "REPLACED_CLOSE_CODE",
    "Direction",
    "DropReason",
    "FrameSink",
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
"""Outbound bytes queued per socket before frames are dropped (harness) or held (env)."""

DEFAULT_MAX_QUEUE_FRAMES = 8192
"""Outbound frames queued per socket, same policy as the byte bound."""

DEFAULT_MAX_STREAMS_PER_ENVIRONMENT = 4096
"""Routed streams per environment id (matches the environment's own stream limit)."""

SOCKET_CLOSE_TIMEOUT_S = 2.0
"""Longest wait for a websocket close handshake before the transport is cut."""

REPLACED_CLOSE_CODE = 4000
"""Websocket close code sent to an environment socket replaced by a newer one."""


class Direction(StrEnum):
    HARNESS_TO_ENVIRONMENT = "harness_to_environment"
    ENVIRONMENT_TO_HARNESS = "environment_to_harness"


class DropReason(StrEnum):
    """Router-level reasons a frame was not forwarded (besides ``InvalidFrameReason``)."""

    TEXT_FRAME = "text_frame"
    """A websocket text message; the relay is binary only."""
    UNKNOWN_STREAM = "unknown_stream"
    """An environment frame for a stream no harness owns."""
    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    """A harness frame for a stream another harness socket (other nonce) owns."""
    ENVIRONMENT_OFFLINE = "environment_offline"
    """A harness frame while its environment has no socket."""
    HARNESS_OFFLINE = "harness_offline"
    """An environment frame for a stream whose owner socket is gone (within grace)."""
    HARNESS_QUEUE_FULL = "harness_queue_full"
    """The owning harness socket's outbound queue is full."""
    TOO_MANY_STREAMS = "too_many_streams"
    """A new stream over ``max_streams_per_environment``."""
    REPLACED_SOCKET = "replaced_socket"
    """A frame from an environment socket that a newer one has replaced."""


class ResetReason(StrEnum):
    """Reasons of the resets the router itself sends (part of the wire contract)."""

    STREAM_OWNED_BY_ANOTHER_HARNESS = "stream_owned_by_another_harness"
    HARNESS_OFFLINE = "harness_offline"
    ENVIRONMENT_OFFLINE = "environment_offline"
    TOO_MANY_STREAMS = "too_many_streams"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    environment_grace_s: float = DEFAULT_ENVIRONMENT_GRACE_S
    harness_grace_s: float = DEFAULT_HARNESS_GRACE_S
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES
    max_streams_per_environment: int = DEFAULT_MAX_STREAMS_PER_ENVIRONMENT
    frame_limits: FrameLimits = INBOUND_LIMITS

    def __post_init__(self) -> None:
        if self.environment_grace_s < 0 or self.harness_grace_s < 0:
            raise ValueError("grace periods must not be negative")
        if self.max_queue_bytes <= 0 or self.max_queue_frames <= 0:
            raise ValueError("queue bounds must be positive")
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
    """By :class:`DropReason` or ``InvalidFrameReason`` value."""
    resets_sent: Counter[str] = field(default_factory=Counter)
    """By :class:`ResetReason`."""
    sockets_accepted: Counter[str] = field(default_factory=Counter)
    """By role."""
    reclaims: int = 0
    """Streams taken over by a socket with the owner's nonce."""


class FrameSink(Protocol):
    """The part of a websocket the router writes to (aiohttp's ``WebSocketResponse``)."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class SocketPeer:
    """One admitted relay websocket: its grant, outbound queue and writer task."""

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
    ) -> None:
        self.sink = sink
        self.role = role
        self.environment_id = environment_id
        self.nonce = nonce
        self.label = label or f"{role.value} socket for {environment_id}"
        self.max_queue_bytes = max_queue_bytes
        self.max_queue_frames = max_queue_frames
        self.queued_bytes = 0
        self.closed = False
        self.owned: set[str] = set()
        """Harness sockets: ids of the streams this socket owns."""
        self.overflow_logged = False
        self._queue: deque[bytes] = deque()
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
        self._push(data)
        return True

    def force_enqueue(self, data: bytes) -> bool:
        """Queue ``data`` regardless of the bounds (control frames, frames whose sender
        already waited for room); False only when closed."""
        if self.closed:
            return False
        self._push(data)
        return True

    def _push(self, data: bytes) -> None:
        self._queue.append(data)
        self.queued_bytes += len(data)
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
        try:
            while True:
                if not queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                data = queue.popleft()
                self.queued_bytes -= len(data)
                if not self._room.is_set() and self.has_room():
                    self._room.set()
                await self.sink.send_bytes(data)
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
    orphan_timer: asyncio.TimerHandle | None = None


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


class Router:
    """Routing state for every environment id (see the module docstring)."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.stats = RouterStats()
        self._routes: dict[str, _EnvironmentRoute] = {}
        self._peers: set[SocketPeer] = set()
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

    def stream_owner(self, environment_id: str, stream_id: str) -> SocketPeer | None:
        route = self._routes.get(environment_id)
        stream = route.streams.get(stream_id) if route else None
        return stream.owner if stream else None

    def online_environments(self) -> int:
        return sum(1 for route in self._routes.values() if route.socket is not None)

    # --- sockets ---------------------------------------------------------------------

    def new_peer(
        self, sink: FrameSink, role: UrlRole, environment_id: str, nonce: str, label: str = ""
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
        )

    def attach(self, peer: SocketPeer) -> SocketPeer | None:
        """Admit a socket and start its writer. For an environment socket, returns the
        socket it replaces (the caller closes it with :data:`REPLACED_CLOSE_CODE`)."""
        peer.start()
        self._peers.add(peer)
        self.stats.sockets_accepted[peer.role.value] += 1
        route = self._route(peer.environment_id)
        if peer.role is UrlRole.HARNESS:
            route.harnesses.add(peer)
            return None
        old = route.socket
        route.socket = peer
        self._cancel_grace(route)
        if old is not None:
            log.info("environment %s: a new socket replaces the old one", peer.environment_id)
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
                    stream.owner = None
                    stream.orphan_timer = self._loop.call_later(
                        self.config.harness_grace_s, self._orphan_expired, route, stream
                    )
            peer.owned.clear()
        elif route.socket is peer:
            route.socket = None
            log.info(
                "environment %s went offline; its %d streams wait %.1fs",
                peer.environment_id,
                len(route.streams),
                self.config.environment_grace_s,
            )
            self._start_grace(route, self.config.environment_grace_s)
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
                if stream.orphan_timer is not None:
                    stream.orphan_timer.cancel()
        self._routes.clear()

    # --- frames ----------------------------------------------------------------------

    def on_text_message(self, peer: SocketPeer) -> None:
        self.stats.dropped[DropReason.TEXT_FRAME] += 1

    def on_environment_message(self, peer: SocketPeer, data: bytes) -> None:
        """A binary message from an environment socket."""
        route = self._routes.get(peer.environment_id)
        if route is None or route.socket is not peer:
            self.stats.dropped[DropReason.REPLACED_SOCKET] += 1
            return
        decoded = self._decode(data)
        if decoded is None:
            return
        stream_id, kind = decoded
        stream = route.streams.get(stream_id)
        if stream is None:
            self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
            return
        owner = stream.owner
        if kind == "reset":
            self._end_stream(route, stream)
        if owner is None:
            self.stats.dropped[DropReason.HARNESS_OFFLINE] += 1
            return
        if owner.try_enqueue(data):
            self.stats.frames_routed[Direction.ENVIRONMENT_TO_HARNESS] += 1
            self.stats.bytes_routed[Direction.ENVIRONMENT_TO_HARNESS] += len(data)
            return
        self.stats.dropped[DropReason.HARNESS_QUEUE_FULL] += 1
        if not owner.overflow_logged:
            owner.overflow_logged = True
            log.warning(
                "%s is not reading fast enough: its outbound queue is full "
                "(%d frames, %d bytes); dropping frames for it",
                owner.label,
                owner.queued_frames,
                owner.queued_bytes,
            )

    async def on_harness_message(self, peer: SocketPeer, data: bytes) -> None:
        """A binary message from a harness socket (waits while the environment's
        outbound queue is full)."""
        decoded = self._decode(data)
        if decoded is None:
            return
        route = self._routes.get(peer.environment_id)
        environment = route.socket if route is not None else None
        if environment is not None and not environment.has_room():
            await environment.wait_for_room()
        stream_id, kind = decoded
        self._route_from_harness(peer, stream_id, kind == "reset", data)

    def _route_from_harness(
        self, peer: SocketPeer, stream_id: str, is_reset: bool, data: bytes
    ) -> None:
        route = self._route(peer.environment_id)
        stream = route.streams.get(stream_id)
        if stream is None:
            if not is_reset:
                if route.socket is None and route.grace_timer is None:
                    self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
                    self._reply_reset(peer, stream_id, ResetReason.ENVIRONMENT_OFFLINE)
                    return
                if len(route.streams) >= self.config.max_streams_per_environment:
                    self.stats.dropped[DropReason.TOO_MANY_STREAMS] += 1
                    self._reply_reset(peer, stream_id, ResetReason.TOO_MANY_STREAMS)
                    return
                stream = _StreamRoute(stream_id, peer.nonce, peer)
                route.streams[stream_id] = stream
                peer.owned.add(stream_id)
        elif stream.owner is not peer:
            if stream.nonce != peer.nonce:
                self.stats.dropped[DropReason.STREAM_OWNED_BY_ANOTHER_HARNESS] += 1
                if not is_reset:
                    self._reply_reset(peer, stream_id, ResetReason.STREAM_OWNED_BY_ANOTHER_HARNESS)
                return
            self._reclaim(stream, peer)
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

    def _decode(self, data: bytes) -> tuple[str, BodyKind] | None:
        """``(stream_id, body kind)`` of a valid frame; an invalid one is counted."""
        try:
            return decode_route(data, self.config.frame_limits)
        except InvalidFrame as exc:
            self.stats.dropped[exc.reason.value] += 1
            return None

    def _route(self, environment_id: str) -> _EnvironmentRoute:
        route = self._routes.get(environment_id)
        if route is None:
            route = self._routes[environment_id] = _EnvironmentRoute(environment_id)
            remaining = self._startup_grace_until - self._loop.time()
            if remaining > 0:
                self._start_grace(route, remaining)
        return route

    def _reclaim(self, stream: _StreamRoute, peer: SocketPeer) -> None:
        if stream.owner is not None:
            stream.owner.owned.discard(stream.stream_id)
        if stream.orphan_timer is not None:
            stream.orphan_timer.cancel()
            stream.orphan_timer = None
        stream.owner = peer
        peer.owned.add(stream.stream_id)
        self.stats.reclaims += 1

    def _end_stream(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if route.streams.get(stream.stream_id) is stream:
            del route.streams[stream.stream_id]
        if stream.owner is not None:
            stream.owner.owned.discard(stream.stream_id)
        if stream.orphan_timer is not None:
            stream.orphan_timer.cancel()
            stream.orphan_timer = None

    def _orphan_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.orphan_timer = None
        if stream.owner is not None or route.streams.get(stream.stream_id) is not stream:
            return
        self._end_stream(route, stream)
        if route.socket is not None:
            self._send_reset(route.socket, stream.stream_id, ResetReason.HARNESS_OFFLINE)
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
                self._send_reset(stream.owner, stream.stream_id, ResetReason.ENVIRONMENT_OFFLINE)
        self._maybe_forget(route)

    def _send_reset(self, peer: SocketPeer, stream_id: str, reason: ResetReason) -> None:
        if peer.force_enqueue(encode_frame(reset_frame(stream_id, reason.value))):
            self.stats.resets_sent[reason.value] += 1

    def _reply_reset(self, peer: SocketPeer, stream_id: str, reason: ResetReason) -> None:
        """A reset answering a refused frame: bounded by the offender's own queue."""
        if peer.try_enqueue(encode_frame(reset_frame(stream_id, reason.value))):
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
