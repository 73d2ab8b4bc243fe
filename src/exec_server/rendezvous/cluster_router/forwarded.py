"""Frames other nodes forward: :class:`ReceivesForwardedFrames`, the router's side of
the :class:`~exec_server.rendezvous.cluster.frame_bus.InboundHandler` contract.

A forwarded frame is accepted only if the records name the sender as the stream's
owner (harness frames) or as the environment's holder (environment frames), and this
node as the other end. Checks, cheapest first, all sans-IO decisions of
:mod:`~exec_server.rendezvous.cluster.routing`:

1. :func:`~exec_server.rendezvous.cluster.routing.check_forwarded` against this node's
   routes: a stream already routed between the sender and a local socket is delivered
   at once (:meth:`~ReceivesForwardedFrames.try_deliver` does that without a task
   switch when the local socket has room);
2. :func:`~exec_server.rendezvous.cluster.routing.verify_inbound` against the watch
   cache, then, when the cache disagrees, against the records fetched from the shared
   state (counted as ``lookups``).

Anything else is refused and counted (``refused_from_node``): a forged frame, or one
from a node that lost the stream or its lease. A harness frame that passes creates or
moves the stream's route here (owned by the sender's remote peer). What
:meth:`~ReceivesForwardedFrames.try_deliver` hands to local sockets is written out when
the bus's read is done (:meth:`~ReceivesForwardedFrames.flush_delivered`), not at the
end of the loop iteration.

Frames lost between two nodes (:meth:`~ReceivesForwardedFrames.channel_lost`) reset the
legacy streams of that environment between them (``relay_route_lost``, at the local end,
:func:`~exec_server.rendezvous.cluster.routing.end_cut_off`); reliable streams
retransmit. Pause and resume requests from a harness's node arrive as control frames
and pause the stream at the environment until neither node wants it paused.
"""

from __future__ import annotations

import logging

from ...relay.control import ControlMessage, PauseOutput, ResumeOutput, decode_control
from ...relay.errors import InvalidFrame
from ...relay.frame_codec import decode_route, peek_route
from ..cluster.frame_bus import RemoteFrame
from ..cluster.routing import (
    Accept,
    KnownRoute,
    LocalEnd,
    Lookup,
    Refuse,
    RefuseReason,
    check_forwarded,
    end_cut_off,
    verify_inbound,
)
from ..cluster.routing import Direction as BusDirection
from ..router import Direction, DropReason, ResetReason, SocketPeer, _EnvironmentRoute, _StreamRoute
from ..url_signing import UrlRole
from .peers import node_of
from .state_changes import FollowsClusterState

__all__ = ["ReceivesForwardedFrames"]

log = logging.getLogger(__name__)

_Admitted = tuple[_EnvironmentRoute, SocketPeer, _StreamRoute | None]
"""A harness frame let in: its route, the local environment socket, its stream (None
for a reset or control message of a stream not routed here)."""


class ReceivesForwardedFrames(FollowsClusterState):
    """Verifies and routes what other nodes forward (module docstring)."""

    def try_deliver(self, frame: RemoteFrame) -> bool:
        """The fast path of :meth:`deliver`: a frame of a stream routed here between the
        sender and a local socket, with room at that socket."""
        if frame.control:
            return False
        route = self._routes.get(frame.environment_id)
        if route is None:
            return False
        try:
            stream_id, kind, flagged = peek_route(frame.data, self.config.frame_limits)
        except InvalidFrame:
            return False  # deliver() refuses and counts it
        stream = route.streams.get(stream_id)
        if stream is None:
            return False
        check = check_forwarded(frame.sender, frame.direction, self._ends(route, stream))
        if not isinstance(check, KnownRoute):
            return False
        socket = route.socket
        to_environment = frame.direction is BusDirection.HARNESS_TO_ENVIRONMENT
        if to_environment and (socket is None or not socket.has_room()):
            return False
        if not flagged:
            stream.legacy_seen = True
        if not to_environment:
            socket = stream.owner
            self._to_harness(route, stream, kind, flagged, frame.data)
        else:
            assert socket is not None
            if kind == "reset":
                self._end_stream(route, stream)
            self._enqueue_to_environment(route, socket, frame.data, kind)
        delivered_to = self._delivered_to
        if socket is not None and not socket.remote and socket not in delivered_to:
            delivered_to.append(socket)
        return True

    def flush_delivered(self) -> None:
        """The bus's read is done: the local sockets written to in it write out the
        small frames they gathered now (one system call each), rather than at the end of
        the loop iteration. A socket whose write fails is logged (its connection reports
        the loss to its owner) and the others are written all the same."""
        delivered_to = self._delivered_to
        for socket in delivered_to:
            flush = getattr(socket.sink, "flush", None)
            if flush is not None:
                try:
                    flush()
                except Exception:
                    log.exception("%s: writing out the forwarded frames failed", socket.label)
        delivered_to.clear()

    async def deliver(self, frame: RemoteFrame) -> None:
        """A frame another node forwarded (verified before anything is done with it)."""
        control: ControlMessage | None = None
        if frame.control:
            control = decode_control(frame.data)
            if not isinstance(control, PauseOutput | ResumeOutput):
                self._refused(frame, "invalid_frame")
                return
            stream_id, kind, flagged = control.stream_id, "control", True
        else:
            try:
                stream_id, kind, flagged = decode_route(frame.data, self.config.frame_limits)
            except InvalidFrame:
                self._refused(frame, "invalid_frame")
                return
        if frame.direction is BusDirection.HARNESS_TO_ENVIRONMENT:
            await self._from_harness_node(frame, stream_id, kind, flagged, control)
        else:
            await self._from_environment_node(frame, stream_id, kind, flagged)

    # --- harness frames ------------------------------------------------------------------

    async def _from_harness_node(
        self,
        frame: RemoteFrame,
        stream_id: str,
        kind: str,
        flagged: bool,
        control: ControlMessage | None,
    ) -> None:
        admitted = await self._admit_harness_frame(frame, stream_id, kind, flagged, control)
        if admitted is None:
            return
        route, environment, stream = admitted
        if control is not None:
            if stream is not None:
                self._remote_pause(route, stream, isinstance(control, PauseOutput))
            return
        if stream is not None:
            if not flagged:
                stream.legacy_seen = True
            if kind == "reset":
                self._end_stream(route, stream)
        if not environment.has_room():
            await environment.wait_for_room()
            if route.socket is not environment:
                self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
                return
        self._enqueue_to_environment(route, environment, frame.data, kind)

    async def _admit_harness_frame(
        self,
        frame: RemoteFrame,
        stream_id: str,
        kind: str,
        flagged: bool,
        control: ControlMessage | None,
    ) -> _Admitted | None:
        """Let a harness frame in (None: refused, and counted or answered)."""
        route = self._routes.get(frame.environment_id)
        stream = route.streams.get(stream_id) if route is not None else None
        check = check_forwarded(
            frame.sender, BusDirection.HARNESS_TO_ENVIRONMENT, self._ends(route, stream)
        )
        if isinstance(check, Refuse):
            self._refused(frame, check.reason)
            return None
        if isinstance(check, KnownRoute):
            assert route is not None and route.socket is not None
            return route, route.socket, stream
        verdict = await self._verify(frame, BusDirection.HARNESS_TO_ENVIRONMENT, stream_id)
        if isinstance(verdict, Refuse):
            self._refused(frame, verdict.reason)
            return None
        route = self._routes.get(frame.environment_id)
        environment = route.socket if route is not None else None
        if (
            route is None
            or environment is None
            or environment.remote
            or environment.socket_id != verdict.socket_id
        ):
            self._refused(frame, RefuseReason.NOT_ENVIRONMENT_HOLDER)
            return None
        return self._route_stream_from(frame, route, environment, stream_id, kind, flagged, control)

    def _route_stream_from(
        self,
        frame: RemoteFrame,
        route: _EnvironmentRoute,
        environment: SocketPeer,
        stream_id: str,
        kind: str,
        flagged: bool,
        control: ControlMessage | None,
    ) -> _Admitted | None:
        """The records say the sender owns the stream: route it to the sender's node
        (a new route, or one moved from its previous owner)."""
        environment_id = route.environment_id
        record = self.state.stream_owner(environment_id, stream_id)
        credential = record.value.credential if record is not None else ""
        sender = self._remote_peer(frame.sender, environment_id, UrlRole.HARNESS)
        stream = route.streams.get(stream_id)
        if stream is not None:
            if stream.owner is not sender:
                self._move_stream(route, stream, sender, credential)
            return route, environment, stream
        if kind == "reset" or control is not None:
            return route, environment, None
        if len(route.streams) >= self.config.max_streams_per_environment:
            self.stats.dropped[DropReason.TOO_MANY_STREAMS] += 1
            self._reply_reset(sender, stream_id, ResetReason.TOO_MANY_STREAMS, flagged)
            return None
        stream = _StreamRoute(stream_id, credential, sender, flagged, remote=True)
        route.streams[stream_id] = stream
        sender.owned.add(stream_id)
        return route, environment, stream

    def _enqueue_to_environment(
        self, route: _EnvironmentRoute, environment: SocketPeer, data: bytes, kind: str
    ) -> None:
        if not environment.force_enqueue(data):
            self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
            return
        self.stats.frames_routed[Direction.HARNESS_TO_ENVIRONMENT] += 1
        self.stats.bytes_routed[Direction.HARNESS_TO_ENVIRONMENT] += len(data)
        if kind == "reset":
            self._maybe_forget(route)

    def _remote_pause(self, route: _EnvironmentRoute, stream: _StreamRoute, pause: bool) -> None:
        """The harness's node wants this stream's output paused (or no longer)."""
        if stream.ended or stream.remote_paused == pause:
            return
        stream.remote_paused = pause
        socket = route.socket
        if socket is not None and not stream.paused:
            socket.send_control(
                PauseOutput(stream.stream_id) if pause else ResumeOutput(stream.stream_id)
            )

    # --- environment frames --------------------------------------------------------------

    async def _from_environment_node(
        self, frame: RemoteFrame, stream_id: str, kind: str, flagged: bool
    ) -> None:
        route = self._routes.get(frame.environment_id)
        stream = route.streams.get(stream_id) if route is not None else None
        check = check_forwarded(
            frame.sender, BusDirection.ENVIRONMENT_TO_HARNESS, self._ends(route, stream)
        )
        if isinstance(check, Refuse):
            self._refused(frame, check.reason)
            return
        if not isinstance(check, KnownRoute):
            found = await self._stream_by_records(frame, stream_id)
            if found is None:
                return
            route, stream = found
        assert route is not None and stream is not None
        if not flagged:
            stream.legacy_seen = True
        self._to_harness(route, stream, kind, flagged, frame.data)

    async def _stream_by_records(
        self, frame: RemoteFrame, stream_id: str
    ) -> tuple[_EnvironmentRoute, _StreamRoute] | None:
        """Verify an environment frame against the records; the local stream it goes to
        (None: refused or dropped, and counted)."""
        verdict = await self._verify(frame, BusDirection.ENVIRONMENT_TO_HARNESS, stream_id)
        if isinstance(verdict, Refuse):
            self._refused(frame, verdict.reason)
            return None
        environment_id = frame.environment_id
        route = self._routes.get(environment_id)
        stream = route.streams.get(stream_id) if route is not None else None
        if route is None or stream is None:
            self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
            return None
        owner = stream.owner
        if owner is not None and owner.socket_id != verdict.socket_id:
            self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
            return None
        if node_of(route.socket) != frame.sender:
            holder = self.state.environment_holder(environment_id)
            self._follow_holder(route, holder.value if holder is not None else None)
        return route, stream

    # --- verification --------------------------------------------------------------------

    async def _verify(
        self, frame: RemoteFrame, direction: BusDirection, stream_id: str
    ) -> Accept | Refuse:
        """:func:`verify_inbound` against the cache, then the fetched records."""
        environment_id = frame.environment_id
        state = self.state
        holder = state.environment_holder(environment_id)
        owner = state.stream_owner(environment_id, stream_id)
        verdict = verify_inbound(
            self.node,
            frame.sender,
            direction,
            holder.value if holder is not None else None,
            owner.value if owner is not None else None,
            authoritative=False,
        )
        if not isinstance(verdict, Lookup):
            return verdict
        self.cluster_stats.lookups += 1
        try:
            holder = await state.fetch_environment_holder(environment_id)
            owner = await state.fetch_stream_owner(environment_id, stream_id)
        except Exception as exc:
            log.debug("could not verify a frame from %s: %r", frame.sender, exc)
            return Refuse(
                RefuseReason.SENDER_NOT_STREAM_OWNER
                if direction is BusDirection.HARNESS_TO_ENVIRONMENT
                else RefuseReason.SENDER_NOT_ENVIRONMENT_HOLDER
            )
        final = verify_inbound(
            self.node,
            frame.sender,
            direction,
            holder.value if holder is not None else None,
            owner.value if owner is not None else None,
            authoritative=True,
        )
        assert not isinstance(final, Lookup)
        return final

    def _refused(self, frame: RemoteFrame, reason: str) -> None:
        self.cluster_stats.refused[reason] += 1
        self.stats.dropped[DropReason.REFUSED_FROM_NODE] += 1
        key = (frame.sender.node_id, reason)
        if key not in self._refusals_logged and len(self._refusals_logged) < 1024:
            self._refusals_logged.add(key)
            log.warning(
                "refused a frame from node %s for environment %s: %s",
                frame.sender,
                frame.environment_id,
                reason,
            )

    # --- losses ----------------------------------------------------------------------------

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        """Frames between this node and ``node_id`` for the environment were lost: the
        streams between them that cannot retransmit are reset at both local ends."""
        self.cluster_stats.channels_lost += 1
        route = self._routes.get(environment_id)
        if route is None:
            return
        for stream in list(route.streams.values()):
            if stream.reliable and not stream.legacy_seen:
                continue
            end = end_cut_off(
                self._ends(route, stream), owner_remote=stream.remote, lost_node_id=node_id
            )
            socket = route.socket if end is LocalEnd.ENVIRONMENT else stream.owner
            if end is not None and socket is not None:
                self._end_stream(route, stream)
                self._send_reset(socket, stream, ResetReason.RELAY_ROUTE_LOST)
        self._maybe_forget(route)
