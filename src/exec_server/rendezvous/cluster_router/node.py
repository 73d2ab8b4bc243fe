"""The router of one rendezvous node in a cluster: :class:`ClusterRouter`.

It is the single-node :class:`~exec_server.rendezvous.router.Router` (same queues,
grace periods, pauses, resets and ownership rules) plus what several nodes need, one
job per module of this package:

* **Local sockets** (here): an environment socket is admitted only once its holder
  record is ours (:meth:`ClusterRouter.claim`, newest socket wins); a harness socket's
  first frame on a stream makes the stream's owner record name it, and a ``resume`` from
  a newer socket with the same URL nonce takes it over, on any node
  (:mod:`~exec_server.rendezvous.cluster_router.stream_claim`, compare-and-set). A
  harness frame for an environment nobody here knows reads its holder record first
  (the cache may be behind a claim made elsewhere). Records are released or deleted
  when the socket or stream ends, in the background, in order
  (:mod:`~exec_server.rendezvous.cluster_router.record_writer`). The hooks of the
  single-node router find streams whose owner is a harness on another node.
* **Remote peers** (:mod:`~exec_server.rendezvous.cluster_router.peers`): another node
  looks like a socket, bounded like one, drained into the frame bus.
* **Inbound frames** (:mod:`~exec_server.rendezvous.cluster_router.forwarded`): what
  another node forwards is verified against the routes, then the records, and refused
  and counted otherwise; lost frames reset the legacy streams between the two nodes.
* **Changes** (:mod:`~exec_server.rendezvous.cluster_router.state_changes`): moved or
  dead environments, streams taken over elsewhere, dead nodes, this node's lost lease.
* **Legacy pauses** across nodes: the harness's node does the accounting of its slow
  harness socket and asks the environment's node (a control message on the bus) to
  pause or resume one stream at the environment; the environment's node also pauses a
  stream whose frames wait for the bus itself, and resumes only when neither wants it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ...relay.control import PauseOutput
from ..cluster.records import StreamOwner
from ..cluster.routing import ClaimRefused, NoRouteReason, ToLocal, ToNode, route_to_harness
from ..router import (
    REPLACED_CLOSE_CODE,
    DropReason,
    ResetReason,
    SocketPeer,
    _EnvironmentRoute,
    _StreamRoute,
)
from ..url_signing import UrlRole
from .base import LOOKUP_INTERVAL_S, UNAVAILABLE_CLOSE_CODE
from .forwarded import ReceivesForwardedFrames
from .stream_claim import Owned, write_stream_claim

__all__ = ["ClusterRouter"]

log = logging.getLogger(__name__)


class ClusterRouter(ReceivesForwardedFrames):
    """Routing state of one node of a cluster (see the module docstring).

    ``bus`` may be given after construction (:meth:`attach_bus`): the bus needs the
    router as its inbound handler.
    """

    # --- queries -------------------------------------------------------------------------

    def is_online(self, environment_id: str) -> bool:
        """Whether any live node holds the environment's socket."""
        route = self._routes.get(environment_id)
        if route is not None and route.socket is not None and not route.socket.remote:
            return True
        holder = self.state.environment_holder(environment_id)
        return holder is not None and self.state.is_live(holder.value.node)

    def stream_count(self, environment_id: str | None = None) -> int:
        """Streams routed on this node, or (given an environment id) the environment's
        streams in the whole cluster."""
        if environment_id is None:
            return super().stream_count()
        return len(self.state.streams_of(environment_id))

    def online_environments(self) -> int:
        return sum(
            1
            for route in self._routes.values()
            if route.socket is not None and not route.socket.remote
        )

    # --- sockets -------------------------------------------------------------------------

    async def claim(self, peer: SocketPeer) -> int | None:
        environment_id = peer.environment_id
        try:
            claim = await self.state.claim_environment(environment_id, peer.socket_id, time.time())
        except Exception as exc:
            log.warning("could not record %s as the environment's holder: %r", peer.label, exc)
            return UNAVAILABLE_CLOSE_CODE
        if not claim.won:
            log.info("%s: a newer socket on node %s won", peer.label, claim.record.value.node_id)
            return REPLACED_CLOSE_CODE
        self._holds[environment_id] = claim.record
        return None

    def attach(self, peer: SocketPeer) -> SocketPeer | None:
        self._sockets[peer.socket_id] = peer
        if peer.role is not UrlRole.ENVIRONMENT:
            return super().attach(peer)
        route = self._route(peer.environment_id)
        old = route.socket
        if old is not None and old.remote:
            route.socket = None
            self._drop_remote_peer(old)
        replaced = super().attach(peer)
        for stream in route.streams.values():
            if stream.remote_paused and not stream.paused:
                peer.send_control(PauseOutput(stream.stream_id))
        return replaced

    def detach(self, peer: SocketPeer) -> None:
        self._sockets.pop(peer.socket_id, None)
        environment_id = peer.environment_id
        route = self._routes.get(environment_id)
        if peer.role is UrlRole.ENVIRONMENT and route is not None and route.socket is peer:
            hold = self._holds.get(environment_id)
            if hold is not None and hold.value.socket_id == peer.socket_id:
                del self._holds[environment_id]
                revision = hold.revision
                self._write(
                    f"release {environment_id}",
                    lambda: self.state.release_environment(environment_id, revision),
                )
            self._drop_remote_streams(route)
        super().detach(peer)

    # --- harness frames ------------------------------------------------------------------

    async def on_harness_message(self, peer: SocketPeer, data: bytes) -> None:
        stream_id, kind, flagged = self._decode(data)
        route = self._route(peer.environment_id)
        stream = route.streams.get(stream_id)
        if stream is None or stream.owner is not peer:
            if not await self._claim_stream(peer, stream_id, kind, flagged):
                return
            route = self._route(peer.environment_id)
        if route.socket is None and route.grace_timer is None:
            await self._find_environment(route)
        environment = route.socket
        if environment is not None and not environment.has_room():
            await environment.wait_for_room()
        self._route_from_harness(peer, stream_id, kind, flagged, data)
        self._after_harness_frame(peer, route, stream_id, kind, flagged)

    @property
    def harness_message_now(self) -> Callable[[SocketPeer, bytes], bool] | None:
        """:meth:`on_harness_message` from the socket's read callback when it would not
        wait: the frame of a stream this socket already owns, for an environment whose
        socket (here, or the remote peer of its node) has room. Anything else (a
        claim, a lookup, no room) returns False and goes through the socket's task."""
        return self._harness_message_now

    def _harness_message_now(self, peer: SocketPeer, data: bytes) -> bool:
        stream_id, kind, flagged = self._decode(data)
        route = self._routes.get(peer.environment_id)
        if route is None:
            return False
        stream = route.streams.get(stream_id)
        environment = route.socket
        if (
            stream is None
            or stream.owner is not peer
            or environment is None
            or not environment.has_room()
        ):
            return False
        self._route_from_harness(peer, stream_id, kind, flagged, data)
        self._after_harness_frame(peer, route, stream_id, kind, flagged)
        return True

    def _after_harness_frame(
        self, peer: SocketPeer, route: _EnvironmentRoute, stream_id: str, kind: str, flagged: bool
    ) -> None:
        route = self._routes.get(peer.environment_id) or route
        stream = route.streams.get(stream_id)
        if stream is not None:
            if not flagged:
                stream.legacy_seen = True
        elif kind != "reset":
            # Refused locally after the record was written (the routes moved during the
            # claim): the record must not outlive it.
            self._forget_record(peer.environment_id, stream_id)

    async def _claim_stream(
        self, peer: SocketPeer, stream_id: str, kind: str, flagged: bool
    ) -> bool:
        """Make the shared record name ``peer`` as the stream's owner. False when the
        frame is refused here (already answered); True lets the single-node rules run
        (which may still refuse it, without a record written)."""
        environment_id = peer.environment_id
        route = self._route(environment_id)
        stream = route.streams.get(stream_id)
        is_reset = kind == "reset"
        if stream is None and not is_reset and route.socket is None and route.grace_timer is None:
            await self._find_environment(route)
        if not self._needs_owner_record(route, stream, peer, kind):
            return True
        node = self.node
        claimant = StreamOwner(
            node.node_id, node.incarnation, peer.socket_id, peer.nonce, time.time()
        )
        outcome = await write_stream_claim(
            self.state,
            environment_id,
            stream_id,
            claimant,
            is_resume=kind == "resume",
            counts=self.cluster_stats.claims,
        )
        if isinstance(outcome, Owned):
            if outcome.revision is not None:
                self._records[(environment_id, stream_id)] = outcome.revision
            return True
        if isinstance(outcome, ClaimRefused):
            self.stats.dropped[DropReason.STREAM_OWNED_BY_ANOTHER_HARNESS] += 1
            if not is_reset:
                self._reply_reset(
                    peer, stream_id, ResetReason.STREAM_OWNED_BY_ANOTHER_HARNESS, flagged
                )
            return False
        self.stats.dropped[DropReason.CLUSTER_UNAVAILABLE] += 1
        if not flagged and not is_reset:  # a reliable harness just sends it again
            self._reply_reset(peer, stream_id, ResetReason.CLUSTER_UNAVAILABLE, flagged)
        return False

    def _needs_owner_record(
        self, route: _EnvironmentRoute, stream: _StreamRoute | None, peer: SocketPeer, kind: str
    ) -> bool:
        """Whether the record must name ``peer`` before the single-node rules see the
        frame. Not for a reset of a stream routed nowhere, a new stream of an offline
        environment (answered ``environment_offline``) or beyond the stream limit, nor
        a stream another socket here owns and ``peer`` may not take over: the local
        rules answer those without a record."""
        if stream is None:
            if kind == "reset" or (route.socket is None and route.grace_timer is None):
                return False
            return len(route.streams) < self.config.max_streams_per_environment
        owner = stream.owner
        return owner is None or owner.remote or self._may_reclaim(stream, peer, kind)

    async def _find_environment(self, route: _EnvironmentRoute) -> None:
        """Nothing here says where the environment is: read its holder record (the
        cache may be behind a claim made elsewhere). A holder that died, or a recent
        registration, starts the grace period (the environment is expected back)."""
        environment_id = route.environment_id
        now = self._loop.time()
        if now - self._looked_up.get(environment_id, -LOOKUP_INTERVAL_S) < LOOKUP_INTERVAL_S:
            return
        self._looked_up[environment_id] = now
        if len(self._looked_up) > 4 * len(self._routes) + 1024:
            self._looked_up = {k: v for k, v in self._looked_up.items() if now - v < 60}
        try:
            holder = await self.state.fetch_environment_holder(environment_id)
            registration = (
                await self.state.get_registration(environment_id) if holder is None else None
            )
        except Exception as exc:
            log.debug("could not look up environment %s: %r", environment_id, exc)
            return
        if self._routes.get(environment_id) is not route:
            return
        self._follow_holder(route, holder.value if holder is not None else None)
        if route.socket is not None or route.grace_timer is not None:
            return
        recent = (
            registration is not None
            and time.time() - registration.last_seen < self.config.environment_grace_s
        )
        if holder is not None or recent:
            self._start_grace(route, self.config.environment_grace_s)

    # --- hooks of the single-node router ------------------------------------------------------

    def _route_created(self, route: _EnvironmentRoute) -> None:
        holder = self.state.environment_holder(route.environment_id)
        if holder is not None:
            self._follow_holder(route, holder.value)

    def _adopt_stream(
        self, route: _EnvironmentRoute, stream_id: str, flagged: bool
    ) -> _StreamRoute | None:
        """An environment frame for a stream routed nowhere here: its owner may be a
        harness on another node (the environment just moved here, or resumes)."""
        record = self.state.stream_owner(route.environment_id, stream_id)
        if record is None:
            return None
        owner = record.value
        decision = route_to_harness(self.node, owner, self.state.is_live)
        if isinstance(decision, ToNode):
            peer = self._remote_peer(decision.node, route.environment_id, UrlRole.HARNESS)
            stream = _StreamRoute(stream_id, owner.credential, peer, flagged, remote=True)
            peer.owned.add(stream_id)
        elif isinstance(decision, ToLocal):
            local = self._sockets.get(decision.socket_id)
            if local is None or local.environment_id != route.environment_id:
                return None
            stream = _StreamRoute(stream_id, owner.credential, local, flagged)
            local.owned.add(stream_id)
        elif decision.reason is NoRouteReason.OWNER_DEAD:
            stream = _StreamRoute(stream_id, owner.credential, None, flagged, remote=True)
            stream.orphan_timer = self._loop.call_later(
                self.config.harness_grace_s, self._orphan_expired, route, stream
            )
        else:
            return None
        route.streams[stream_id] = stream
        return stream

    def _reclaim(self, route: _EnvironmentRoute, stream: _StreamRoute, peer: SocketPeer) -> None:
        old = stream.owner
        if old is not None and old.remote:
            # Its node resets its own socket when it sees the record change.
            old.owned.discard(stream.stream_id)
            old.paused.discard(stream)
            stream.owner = None
        stream.remote = False
        super()._reclaim(route, stream, peer)

    def _pause_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.remote_paused:
            super()._pause_output(route, stream)

    def _resume_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.remote_paused:
            super()._resume_output(route, stream)
