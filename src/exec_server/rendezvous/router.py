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

Back-pressure and loss: :mod:`~exec_server.rendezvous.backpressure`.

A node of a rendezvous cluster routes with
:class:`~exec_server.rendezvous.cluster_router.ClusterRouter`: these same rules, with
other nodes as peers and the ownership records shared; the hooks it overrides here
(``_route_created``, ``_adopt_stream``, ``claim``, ``_pause_output``...) do nothing
on a single node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..relay.control import PauseOutput, PeerOffline, PeerOnline
from ..relay.errors import InvalidFrame, InvalidFrameReason
from ..relay.frame_codec import peek_route
from .backpressure import Backpressure
from .errors import SocketProtocolError
from .router_config import (
    DEFAULT_ENVIRONMENT_GRACE_S,
    DEFAULT_HARNESS_GRACE_S,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_FRAMES,
    DEFAULT_MAX_SOCKET_BUFFER_BYTES,
    DEFAULT_MAX_STREAM_BUFFER_BYTES,
    DEFAULT_MAX_STREAMS_PER_ENVIRONMENT,
    DEFAULT_SLOW_HARNESS_TIMEOUT_S,
    DEFAULT_STREAM_PAUSE_BYTES,
    PROTOCOL_ERROR_CLOSE_CODE,
    REPLACED_CLOSE_CODE,
    TOO_BIG_CLOSE_CODE,
    UNSUPPORTED_DATA_CLOSE_CODE,
    Direction,
    DropReason,
    ProtocolErrorReason,
    ResetReason,
    RouterConfig,
    RouterStats,
)
from .socket_peer import FrameSink, SocketPeer
from .socket_peer import _EnvironmentRoute as _EnvironmentRoute
from .socket_peer import _StreamRoute as _StreamRoute
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


class Router(Backpressure):
    """Routing for every environment id (see the module docstring)."""

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

    def on_environment_message(self, peer: SocketPeer, data: bytes | memoryview) -> None:
        """A binary message from an environment socket; raises
        :class:`~exec_server.rendezvous.errors.SocketProtocolError` for an invalid frame.
        ``data`` may be a view of the socket's read buffer, valid during the call only:
        it is written at once or copied (:meth:`SocketPeer.try_enqueue`)."""
        route = self._routes.get(peer.environment_id)
        if route is None or route.socket is not peer:
            self.stats.dropped[DropReason.REPLACED_SOCKET] += 1
            return
        try:
            stream_id, kind, flagged = peek_route(data, self._frame_limits)
        except InvalidFrame as exc:
            raise _protocol_error(exc) from None
        stream = route.streams.get(stream_id)
        if stream is None:
            stream = self._adopt_stream(route, stream_id, flagged)
            if stream is None:
                self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
                return
        owner = stream.owner
        if owner is not None and kind == "data" and type(data) is not bytes:
            # The routed frame's path: a view of the socket's read buffer, written to the
            # harness at once when nothing waits before it (else copied and queued).
            if owner.write_at_once(data, None if flagged else stream):
                if not flagged:
                    stream.legacy_seen = True
                self._frames_to_harness[_TO_HARNESS] += 1
                self._bytes_to_harness[_TO_HARNESS] += len(data)
                return
            data = bytes(data)
        self._to_harness(route, stream, kind, flagged, data)

    def _adopt_stream(
        self, route: _EnvironmentRoute, stream_id: str, flagged: bool
    ) -> _StreamRoute | None:
        """Hook: an environment frame for a stream this router does not know; a route
        for it (the cluster router finds its owner on another node), or None to drop it."""
        return None

    def _to_harness(
        self,
        route: _EnvironmentRoute,
        stream: _StreamRoute,
        kind: str,
        flagged: bool,
        data: bytes | memoryview,
    ) -> None:
        """Queue an environment frame to the stream's owner."""
        owner = stream.owner
        if kind == "reset":
            self._end_stream(route, stream)
        if owner is None:
            self.stats.dropped[DropReason.HARNESS_OFFLINE] += 1
            return
        if type(data) is not bytes:  # a view of a socket's read buffer
            if owner.write_at_once(data, None if flagged else stream):
                stream.legacy_seen = stream.legacy_seen or not flagged
                self.stats.frames_routed[Direction.ENVIRONMENT_TO_HARNESS] += 1
                self.stats.bytes_routed[Direction.ENVIRONMENT_TO_HARNESS] += len(data)
                return
            data = bytes(data)
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

    @property
    def harness_message_now(self) -> Callable[[SocketPeer, bytes], bool] | None:
        """:meth:`on_harness_message` without waiting, for a socket's read callback: a
        callable that routes the frame and returns True, or returns False, having done
        nothing (but raise for an invalid frame), when the environment's queue is full.
        None for a router whose :meth:`on_harness_message` does more (a cluster node)."""
        if type(self).on_harness_message is not _ON_HARNESS_MESSAGE:
            return None
        return self._harness_message_now

    def _harness_message_now(self, peer: SocketPeer, data: bytes) -> bool:
        try:  # _decode, inline: this runs for every harness frame (acks mostly)
            stream_id, kind, flagged = peek_route(data, self._frame_limits)
        except InvalidFrame as exc:
            raise _protocol_error(exc) from None
        route = self._routes.get(peer.environment_id)
        environment = route.socket if route is not None else None
        if environment is not None and not environment.has_room():
            return False
        self._route_from_harness(peer, stream_id, kind, flagged, data)
        return True

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

    def _decode(self, data: bytes | memoryview) -> tuple[str, str, bool]:
        """``(stream_id, body kind, capability flag)`` of a valid frame."""
        try:
            return peek_route(data, self.config.frame_limits)
        except InvalidFrame as exc:
            raise _protocol_error(exc) from None

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


_TO_HARNESS = Direction.ENVIRONMENT_TO_HARNESS

_ON_HARNESS_MESSAGE = Router.on_harness_message
"""The rules :meth:`Router.harness_message_now` stands for (a subclass or a wrapper
that replaces them gets every harness frame through its own method)."""


def _protocol_error(exc: InvalidFrame) -> SocketProtocolError:
    """The socket error for an invalid relay frame (1009 for one over the size limit)."""
    oversize = exc.reason is InvalidFrameReason.OVERSIZE
    return SocketProtocolError(
        TOO_BIG_CLOSE_CODE if oversize else PROTOCOL_ERROR_CLOSE_CODE,
        exc.reason.value,
        f"invalid relay frame: {exc.reason.value}",
    )
