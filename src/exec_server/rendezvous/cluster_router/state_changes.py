"""Following the shared records: :class:`FollowsClusterState`.

The router listens to :class:`~exec_server.rendezvous.cluster.state.ClusterState`
events and moves its routes where the records say:

* an environment whose holder record names another node closes our older socket for it
  (4000) and routes there; one whose holder left or died starts the environment grace
  period here (harnesses with the control subprotocol are told);
* a stream taken over by a harness on another node resets our socket's claim
  (``stream_reclaimed``) or, where the environment is held here, moves the stream to
  that node's remote peer; a record deleted by the owner's node ends the stream here
  after :data:`~exec_server.rendezvous.cluster_router.base.RECORD_LINGER_S` unless the
  reset frame ended it first;
* the streams of a dead node wait ``harness_grace_s`` for their harness to come back
  on any node, then the environment gets ``reset{harness_offline}`` (and the dead
  node's record is deleted);
* losing this node's lease voids every record it holds and closes every local socket
  (1012): its clients reconnect to another node.

Where to route is :func:`~exec_server.rendezvous.cluster.routing.route_to_environment`'s
decision (sans-IO); this module applies it to the routes.
"""

from __future__ import annotations

import logging

from ...relay.control import PauseOutput, PeerOnline
from ..cluster.frame_bus import FrameBus
from ..cluster.liveness import LeaseAcquired, LeaseLost, NodeDown
from ..cluster.records import EnvironmentHolder, NodeRef
from ..cluster.routing import NoRoute, ToNode, route_to_environment
from ..cluster.state import (
    ClusterState,
    EnvironmentHolderChanged,
    StateEvent,
    StreamOwnerChanged,
)
from ..router import (
    REPLACED_CLOSE_CODE,
    ResetReason,
    RouterConfig,
    SocketPeer,
    _EnvironmentRoute,
    _StreamRoute,
)
from ..url_signing import UrlRole
from .base import LEASE_LOST_CLOSE_CODE, RECORD_LINGER_S, ClusterRouterBase
from .peers import RemotePeer, node_of

__all__ = ["FollowsClusterState"]

log = logging.getLogger(__name__)


class FollowsClusterState(ClusterRouterBase):
    """The router's reactions to changes of the shared records (module docstring)."""

    def __init__(
        self, config: RouterConfig | None, state: ClusterState, bus: FrameBus | None = None
    ) -> None:
        super().__init__(config, state, bus)
        self._unlisten = state.add_listener(self._on_state_event)

    def close(self) -> None:
        self._unlisten()
        super().close()

    def _on_state_event(self, event: StateEvent) -> None:
        if self._closed:
            return
        if isinstance(event, EnvironmentHolderChanged):
            route = self._routes.get(event.environment_id)
            if route is not None:
                self._follow_holder(route, event.new)
        elif isinstance(event, StreamOwnerChanged):
            self._owner_changed(event)
        elif isinstance(event, NodeDown):
            self._node_down(event.node)
        elif isinstance(event, LeaseLost):
            self._lease_lost()
        elif isinstance(event, LeaseAcquired) and self.bus is not None:
            self.bus.set_node(event.node)

    # --- environments ----------------------------------------------------------------------

    def _follow_holder(self, route: _EnvironmentRoute, holder: EnvironmentHolder | None) -> None:
        """Point the route at the environment where its holder record says it is."""
        current = route.socket
        node = self.node
        if current is not None and not current.remote:
            if holder is not None and holder.node != node:
                self._lost_environment(route, current, holder)
            return
        decision = route_to_environment(node, holder, self.state.is_live)
        if isinstance(decision, ToNode):
            if node_of(current) == decision.node:
                return
            peer = self._remote_peer(decision.node, route.environment_id, UrlRole.ENVIRONMENT)
            self._remote_environment(route, peer)
        elif current is not None:
            route.socket = None
            self._drop_remote_peer(current)
            if isinstance(decision, NoRoute):
                # Gone (released) or dead: its streams wait for it to come back anywhere.
                self._start_grace(route, self.config.environment_grace_s)
                self._tell_offline(route)
            self._maybe_forget(route)

    def _remote_environment(self, route: _EnvironmentRoute, peer: RemotePeer) -> None:
        """The environment is on another node: route there (what attach does locally)."""
        old = route.socket
        route.socket = peer
        if old is not None and old.remote:
            self._drop_remote_peer(old)
        self._cancel_grace(route)
        for stream in route.streams.values():
            if stream.paused:
                peer.send_control(PauseOutput(stream.stream_id))
        if route.offline_told:
            route.offline_told = False
            for harness in route.harnesses:
                harness.send_control(PeerOnline("environment"))

    def _lost_environment(
        self, route: _EnvironmentRoute, socket: SocketPeer, holder: EnvironmentHolder
    ) -> None:
        """A newer socket on another node holds the environment: close ours."""
        log.info(
            "environment %s: a newer socket on node %s replaces ours",
            route.environment_id,
            holder.node_id,
        )
        self._holds.pop(route.environment_id, None)
        route.socket = None
        self._drop_remote_streams(route)
        self._spawn(
            socket.aclose(
                code=REPLACED_CLOSE_CODE, message=b"replaced by a newer environment socket"
            )
        )
        self._follow_holder(route, holder)

    # --- streams ---------------------------------------------------------------------------

    def _owner_changed(self, event: StreamOwnerChanged) -> None:
        route = self._routes.get(event.environment_id)
        stream = route.streams.get(event.stream_id) if route is not None else None
        if route is None or stream is None:
            return
        new = event.new
        if new is None:
            if stream.remote:
                self._later(RECORD_LINGER_S, lambda: self._record_gone(route, stream))
            return
        if new.node == self.node:
            return
        socket = route.socket
        if socket is not None and not socket.remote:
            peer = self._remote_peer(new.node, route.environment_id, UrlRole.HARNESS)
            self._move_stream(route, stream, peer, new.credential)
            return
        owner = stream.owner
        if owner is not None and not owner.remote:
            self._send_reset(owner, stream, ResetReason.STREAM_RECLAIMED)
        self._records.pop((route.environment_id, stream.stream_id), None)
        self._end_stream(route, stream)
        self._maybe_forget(route)

    def _record_gone(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        """The owner's node deleted the stream's record and no reset came: end it."""
        if stream.ended or route.streams.get(stream.stream_id) is not stream:
            return
        if self.state.stream_owner(route.environment_id, stream.stream_id) is not None:
            return
        self._end_stream(route, stream)
        if route.socket is not None and not route.socket.remote:
            self._send_reset(route.socket, stream, ResetReason.HARNESS_OFFLINE)
        self._maybe_forget(route)

    def _move_stream(
        self, route: _EnvironmentRoute, stream: _StreamRoute, owner: RemotePeer, credential: str
    ) -> None:
        """The stream was taken over by a harness on ``owner``'s node."""
        old = stream.owner
        if old is owner:
            return
        self._unpause(route, stream)  # the new owner's queue is empty
        if old is not None:
            old.owned.discard(stream.stream_id)
            old.paused.discard(stream)
            if not old.remote:
                self._send_reset(old, stream, ResetReason.STREAM_RECLAIMED)
                self._records.pop((route.environment_id, stream.stream_id), None)
        if stream.orphan_timer is not None:
            stream.orphan_timer.cancel()
            stream.orphan_timer = None
        stream.owner = owner
        stream.remote = True
        stream.nonce = credential
        owner.owned.add(stream.stream_id)
        self.stats.reclaims += 1

    # --- nodes -----------------------------------------------------------------------------

    def _node_down(self, node: NodeRef) -> None:
        log.info("node %s is down: its environments and streams wait for their peers", node)
        if self.bus is not None:
            self.bus.forget_node(node.node_id)
        for route in list(self._routes.values()):
            if node_of(route.socket) == node:
                self._follow_holder(route, None)
            for stream in list(route.streams.values()):
                if node_of(stream.owner) == node:
                    self._orphan(route, stream)
        self._remote.drop_node(node)

    def _orphan(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        owner = stream.owner
        if owner is not None:
            owner.owned.discard(stream.stream_id)
            owner.paused.discard(stream)
        stream.owner = None
        if stream.orphan_timer is None:
            stream.orphan_timer = self._loop.call_later(
                self.config.harness_grace_s, self._orphan_expired, route, stream
            )

    def _orphan_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if stream.remote and stream.owner is None:
            record = self.state.stream_owner(route.environment_id, stream.stream_id)
            if record is not None and not self.state.is_live(record.value.node):
                environment_id, stream_id, revision = (
                    route.environment_id,
                    stream.stream_id,
                    record.revision,
                )
                self._write(
                    f"delete the dead stream {stream_id}",
                    lambda: self.state.delete_stream(environment_id, stream_id, revision),
                )
        super()._orphan_expired(route, stream)

    def _lease_lost(self) -> None:
        """Our lease ran out: every record we hold is void; close every local socket."""
        self.cluster_stats.lease_losses += 1
        log.warning("this node lost its cluster lease: closing its %d sockets", len(self._peers))
        self._holds.clear()
        self._records.clear()
        self._writer.clear()
        for peer in list(self._peers):
            self._spawn(
                peer.aclose(
                    code=LEASE_LOST_CLOSE_CODE, message=b"rendezvous node lost its cluster lease"
                )
            )
        self._remote.drop_all()
