"""The router of one rendezvous node in a cluster: :class:`ClusterRouter`.

It is the single-node :class:`~exec_server.rendezvous.router.Router` (same queues,
grace periods, pauses, resets and ownership rules) plus what several nodes need:

* **Remote peers.** Another node looks like a socket: a :class:`RemotePeer` per (node,
  environment, role) with a socket's queue contract, drained into the
  :class:`~exec_server.rendezvous.cluster.frame_bus.FrameBus` channel to that node. On
  the node of a harness socket, the environment's "socket" is the remote peer of the
  node holding it; on the node holding the environment, a stream owned by a harness
  elsewhere is owned by the remote peer of that harness's node. Frames with room in the
  channel's window go straight to the bus; the rest wait in the peer's queue, bounded
  like a socket's (a full queue makes harness readers wait, drops a reliable frame, or
  pauses and finally resets a legacy stream, exactly as for a slow socket).
* **Shared records** (:class:`~exec_server.rendezvous.cluster.state.ClusterState`):
  an environment socket is admitted only once its holder record is ours
  (:meth:`claim`, newest socket wins); a harness socket's first frame on a stream
  creates the stream's owner record, and a ``resume`` from a newer socket with the same
  URL nonce takes it over, on any node
  (:func:`~exec_server.rendezvous.cluster.routing.decide_stream_claim`, compare-and-set).
  Records are released or deleted when the socket or stream ends (in the background, in
  order).
* **Inbound frames** (:meth:`deliver`): a frame another node forwarded is accepted only
  if the records name the sender as the stream's owner (harness frames) or as the
  environment's holder (environment frames), and this node as the other end
  (:func:`~exec_server.rendezvous.cluster.routing.verify_inbound`, against the cache,
  then against the authoritative records when the cache disagrees). Anything else is
  refused and counted (``refused_from_node``): a forged frame, or one from a node that
  lost the stream or its lease. Frames matching the local routing state skip the
  lookup.
* **Changes** (state events): an environment that moved to another node closes our
  older socket for it (4000) and routes there; one whose holder left or died starts
  the environment grace period here (harnesses with the control subprotocol are told);
  a stream taken over elsewhere resets our socket's claim (``stream_reclaimed``); the
  streams of a dead node wait ``harness_grace_s`` for their harness to come back on
  any node, then the environment gets ``reset{harness_offline}``.
* **Losses**: frames lost between two nodes (:meth:`channel_lost`) reset the legacy
  streams of that environment between them (``relay_route_lost``, both local ends);
  reliable streams retransmit. Losing this node's lease closes every local socket
  (1012): its clients reconnect to another node.
* **Legacy pauses** across nodes: the harness's node does the accounting of its slow
  harness socket and asks the environment's node (a control message on the bus) to
  pause or resume one stream at the environment; the environment's node also pauses a
  stream whose frames wait for the bus itself, and resumes only when neither wants it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..relay.control import (
    ControlMessage,
    PauseOutput,
    PeerOnline,
    ResumeOutput,
    decode_control,
)
from ..relay.control import encode_control as _encode_control
from ..relay.errors import InvalidFrame
from ..relay.frame_codec import decode_route
from .cluster.frame_bus import FrameBus, RemoteChannel, RemoteFrame
from .cluster.liveness import LeaseAcquired, LeaseLost, NodeDown
from .cluster.records import EnvironmentHolder, NodeRef, StreamOwner, Versioned
from .cluster.routing import (
    Accept,
    ClaimRefused,
    CreateStream,
    KeepStream,
    Lookup,
    NoRoute,
    NoRouteReason,
    Refuse,
    RefuseReason,
    TakeOverStream,
    ToLocal,
    ToNode,
    decide_stream_claim,
    route_to_environment,
    route_to_harness,
    verify_inbound,
)
from .cluster.routing import Direction as BusDirection
from .cluster.state import (
    ClusterState,
    Conflict,
    EnvironmentHolderChanged,
    StateEvent,
    StreamOwnerChanged,
)
from .cluster.tasks import cancel_and_wait
from .router import (
    REPLACED_CLOSE_CODE,
    Direction,
    DropReason,
    ResetReason,
    Router,
    RouterConfig,
    SocketPeer,
    _EnvironmentRoute,
    _StreamRoute,
)
from .url_signing import UrlRole

__all__ = ["LEASE_LOST_CLOSE_CODE", "ClusterRouter", "ClusterStats", "RemotePeer"]

log = logging.getLogger(__name__)

LEASE_LOST_CLOSE_CODE = 1012
"""Websocket close code ("service restart") for every socket of a node that lost its
cluster lease: reconnect, to another node."""

UNAVAILABLE_CLOSE_CODE = 1013
"""Websocket close code ("try again later") for an environment socket whose holder
record could not be written."""

WRITE_TIMEOUT_S = 10.0
"""Longest a background record write (release, delete) may take."""

RECORD_LINGER_S = 1.0
"""A stream record deleted by the harness's node ends the stream at the environment's
node only after this long, so the reset frame (on another NATS connection) arrives
first and the environment hears its real reason."""

SWEEP_INTERVAL_S = 10.0
"""How often remote peers nothing refers to any more are closed."""

LOOKUP_INTERVAL_S = 1.0
"""Shortest interval between two lookups of an environment nobody here knows to be
online (a harness sending to an offline environment)."""

_CLAIM_ATTEMPTS = 4


@dataclass
class ClusterStats:
    """Counters of the cluster part of the router (besides ``RouterStats``)."""

    refused: Counter[str] = field(default_factory=Counter)
    """Frames from other nodes refused, by
    :class:`~exec_server.rendezvous.cluster.routing.RefuseReason` (or ``invalid_frame``)."""
    lookups: int = 0
    """Inbound frames checked against the authoritative records (cache behind)."""
    claims: Counter[str] = field(default_factory=Counter)
    """Stream record writes by outcome: ``created``, ``taken_over``, ``conflict``,
    ``failed``, or a :class:`~exec_server.rendezvous.cluster.routing.ClaimRefused`."""
    channels_lost: int = 0
    lease_losses: int = 0
    write_failures: int = 0


class _BusSink:
    """A :class:`RemotePeer`'s queue drains here: into its channel, waiting for credit."""

    def __init__(self, peer: RemotePeer) -> None:
        self._peer = peer

    async def send_bytes(self, data: bytes) -> None:
        peer = self._peer
        channel = peer.channel()
        if channel is not None and channel.try_send(data, peer.direction):
            return
        if channel is not None:
            # Below the window again, but maybe not by this frame's size: it goes anyway
            # (a window is exceeded by at most one frame).
            await channel.wait_for_room()
            channel = peer.channel()
        if channel is None or not channel.force_send(data, peer.direction):
            raise ConnectionError(f"{peer.label}: gone")

    async def send_str(self, data: str) -> None:
        raise ConnectionError("control texts are never queued for another node")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


class RemotePeer(SocketPeer):
    """Another node, seen as one socket: its harnesses of one environment (``role`` is
    harness) or the environment it holds (``role`` is environment)."""

    remote = True

    def __init__(
        self, router: ClusterRouter, node: NodeRef, environment_id: str, role: UrlRole
    ) -> None:
        self.node = node
        self.direction = (
            BusDirection.ENVIRONMENT_TO_HARNESS
            if role is UrlRole.HARNESS
            else BusDirection.HARNESS_TO_ENVIRONMENT
        )
        self._router = router
        self._channel: RemoteChannel | None = None
        config = router.config
        super().__init__(
            _BusSink(self),
            role,
            environment_id,
            "",
            max_queue_bytes=config.max_queue_bytes,
            max_queue_frames=config.max_queue_frames,
            label=f"node {node} ({role.value} side of {environment_id})",
        )

    def channel(self) -> RemoteChannel | None:
        """The bus channel to the node (a new one after the bus closed the old)."""
        if self.closed:
            return None
        channel = self._channel
        if channel is None or channel.closed:
            bus = self._router.bus
            if bus is None:
                return None
            channel = self._channel = bus.channel(self.node.node_id, self.environment_id)
        return channel

    def _send_now(self, data: bytes) -> bool:
        """Straight to the bus when nothing waits here and the window has room."""
        if self.queued_frames:
            return False
        channel = self.channel()
        return channel is not None and channel.try_send(data, self.direction)

    def try_enqueue(self, data: bytes) -> bool:
        if self.closed:
            return False
        return self._send_now(data) or super().try_enqueue(data)

    def force_enqueue(self, data: bytes | str, stream: _StreamRoute | None = None) -> bool:
        if self.closed:
            return False
        if type(data) is bytes and self._send_now(data):
            return True
        return super().force_enqueue(data, stream)

    def send_control(self, message: ControlMessage) -> None:
        """Pauses and resumes for the environment go to its node (which tells it)."""
        if self.role is UrlRole.ENVIRONMENT and isinstance(message, PauseOutput | ResumeOutput):
            channel = self.channel()
            if channel is not None:
                channel.send_control(_encode_control(message).encode())


class ClusterRouter(Router):
    """Routing state of one node of a cluster (see the module docstring).

    ``bus`` may be given after construction (:meth:`attach_bus`): the bus needs the
    router as its inbound handler.
    """

    def __init__(
        self, config: RouterConfig | None, state: ClusterState, bus: FrameBus | None = None
    ) -> None:
        super().__init__(config)
        self.state = state
        self.bus = bus
        self.cluster_stats = ClusterStats()
        self._sockets: dict[str, SocketPeer] = {}
        self._remote: dict[tuple[str, str, UrlRole], RemotePeer] = {}
        self._holds: dict[str, Versioned[EnvironmentHolder]] = {}
        """Holder records of our environment sockets (released when they close)."""
        self._records: dict[tuple[str, str], int] = {}
        """Revisions of the stream records we wrote (deleted when the stream ends)."""
        self._looked_up: dict[str, float] = {}
        self._refusals_logged: set[tuple[str, str]] = set()
        self._writes: deque[tuple[str, Callable[[], Awaitable[object]]]] = deque()
        self._write_ready = asyncio.Event()
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops = [
            asyncio.ensure_future(self._write_loop()),
            asyncio.ensure_future(self._sweep_loop()),
        ]
        self._unlisten = state.add_listener(self._on_state_event)

    def attach_bus(self, bus: FrameBus) -> None:
        self.bus = bus

    @property
    def node(self) -> NodeRef:
        return self.state.node

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
        if stream is None:
            if is_reset:
                return True
            if route.socket is None and route.grace_timer is None:
                await self._find_environment(route)
                if route.socket is None and route.grace_timer is None:
                    return True  # answered with environment_offline, nothing to record
            if len(route.streams) >= self.config.max_streams_per_environment:
                return True
        elif (
            stream.owner is not None
            and not stream.owner.remote
            and not self._may_reclaim(stream, peer, kind)
        ):
            return True  # another socket here owns it: the local rules answer
        node = self.node
        claimant = StreamOwner(
            node.node_id, node.incarnation, peer.socket_id, peer.nonce, time.time()
        )
        existing = self.state.stream_owner(environment_id, stream_id)
        stats = self.cluster_stats.claims
        for _ in range(_CLAIM_ATTEMPTS):
            decision = decide_stream_claim(existing, claimant, is_resume=kind == "resume")
            if isinstance(decision, ClaimRefused):
                stats[decision.value] += 1
                self.stats.dropped[DropReason.STREAM_OWNED_BY_ANOTHER_HARNESS] += 1
                if not is_reset:
                    self._reply_reset(
                        peer, stream_id, ResetReason.STREAM_OWNED_BY_ANOTHER_HARNESS, flagged
                    )
                return False
            if isinstance(decision, KeepStream):
                return True
            try:
                if isinstance(decision, CreateStream):
                    record = await self.state.create_stream(environment_id, stream_id, claimant)
                    stats["created"] += 1
                else:
                    assert isinstance(decision, TakeOverStream)
                    record = await self.state.replace_stream(
                        environment_id, stream_id, claimant, decision.expected_revision
                    )
                    stats["taken_over"] += 1
            except Conflict as conflict:
                stats["conflict"] += 1
                existing = conflict.current
                continue
            except Exception as exc:
                stats["failed"] += 1
                log.warning("could not record stream %s of %s: %r", stream_id, peer.label, exc)
                break
            self._records[(environment_id, stream_id)] = record.revision
            return True
        self.stats.dropped[DropReason.CLUSTER_UNAVAILABLE] += 1
        if not flagged and not is_reset:  # a reliable harness just sends it again
            self._reply_reset(peer, stream_id, ResetReason.CLUSTER_UNAVAILABLE, flagged)
        return False

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

    # --- frames from other nodes (FrameBus InboundHandler) ---------------------------------

    def try_deliver(self, frame: RemoteFrame) -> bool:
        """The fast path of :meth:`deliver`: a frame of a stream routed here between the
        sender and a local socket (already verified against the records when the stream
        arrived here, kept up to date by state events), with room at that socket."""
        if frame.control:
            return False
        route = self._routes.get(frame.environment_id)
        if route is None:
            return False
        try:
            stream_id, kind, flagged = decode_route(frame.data, self.config.frame_limits)
        except InvalidFrame:
            return False  # deliver() refuses and counts it
        stream = route.streams.get(stream_id)
        if stream is None:
            return False
        owner = stream.owner
        socket = route.socket
        if frame.direction is BusDirection.HARNESS_TO_ENVIRONMENT:
            if (
                socket is None
                or socket.remote
                or _node_of(owner) != frame.sender
                or not socket.has_room()
            ):
                return False
            if not flagged:
                stream.legacy_seen = True
            if kind == "reset":
                self._end_stream(route, stream)
            if not socket.force_enqueue(frame.data):
                self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
                return True
            self.stats.frames_routed[Direction.HARNESS_TO_ENVIRONMENT] += 1
            self.stats.bytes_routed[Direction.HARNESS_TO_ENVIRONMENT] += len(frame.data)
            if kind == "reset":
                self._maybe_forget(route)
            return True
        if owner is None or owner.remote or _node_of(socket) != frame.sender:
            return False
        if not flagged:
            stream.legacy_seen = True
        self._to_harness(route, stream, kind, flagged, frame.data)
        return True

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

    async def _from_harness_node(
        self,
        frame: RemoteFrame,
        stream_id: str,
        kind: str,
        flagged: bool,
        control: ControlMessage | None,
    ) -> None:
        environment_id = frame.environment_id
        route = self._routes.get(environment_id)
        environment = route.socket if route is not None else None
        if route is None or environment is None or environment.remote:
            self._refused(frame, RefuseReason.NOT_ENVIRONMENT_HOLDER)
            return
        stream = route.streams.get(stream_id)
        owner = stream.owner if stream is not None else None
        if _node_of(owner) != frame.sender:
            verdict = await self._verify(frame, BusDirection.HARNESS_TO_ENVIRONMENT, stream_id)
            if isinstance(verdict, Refuse):
                self._refused(frame, verdict.reason)
                return
            route = self._routes.get(environment_id)
            environment = route.socket if route is not None else None
            if (
                route is None
                or environment is None
                or environment.remote
                or environment.socket_id != verdict.socket_id
            ):
                self._refused(frame, RefuseReason.NOT_ENVIRONMENT_HOLDER)
                return
            record = self.state.stream_owner(environment_id, stream_id)
            credential = record.value.credential if record is not None else ""
            sender = self._remote_peer(frame.sender, environment_id, UrlRole.HARNESS)
            stream = route.streams.get(stream_id)
            if stream is None:
                if kind != "reset" and control is None:
                    if len(route.streams) >= self.config.max_streams_per_environment:
                        self.stats.dropped[DropReason.TOO_MANY_STREAMS] += 1
                        self._reply_reset(sender, stream_id, ResetReason.TOO_MANY_STREAMS, flagged)
                        return
                    stream = _StreamRoute(stream_id, credential, sender, flagged, remote=True)
                    route.streams[stream_id] = stream
                    sender.owned.add(stream_id)
            elif stream.owner is not sender:
                self._move_stream(route, stream, sender, credential)
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
        if not environment.force_enqueue(frame.data):
            self.stats.dropped[DropReason.ENVIRONMENT_OFFLINE] += 1
            return
        self.stats.frames_routed[Direction.HARNESS_TO_ENVIRONMENT] += 1
        self.stats.bytes_routed[Direction.HARNESS_TO_ENVIRONMENT] += len(frame.data)
        if kind == "reset":
            self._maybe_forget(route)

    async def _from_environment_node(
        self, frame: RemoteFrame, stream_id: str, kind: str, flagged: bool
    ) -> None:
        environment_id = frame.environment_id
        route = self._routes.get(environment_id)
        stream = route.streams.get(stream_id) if route is not None else None
        socket = route.socket if route is not None else None
        if (
            stream is None
            or stream.owner is None
            or stream.owner.remote
            or _node_of(socket) != frame.sender
        ):
            verdict = await self._verify(frame, BusDirection.ENVIRONMENT_TO_HARNESS, stream_id)
            if isinstance(verdict, Refuse):
                self._refused(frame, verdict.reason)
                return
            route = self._routes.get(environment_id)
            stream = route.streams.get(stream_id) if route is not None else None
            if route is None or stream is None:
                self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
                return
            owner = stream.owner
            if owner is not None and owner.socket_id != verdict.socket_id:
                self.stats.dropped[DropReason.UNKNOWN_STREAM] += 1
                return
            if _node_of(route.socket) != frame.sender:
                holder = self.state.environment_holder(environment_id)
                self._follow_holder(route, holder.value if holder is not None else None)
        assert route is not None
        if not flagged:
            stream.legacy_seen = True
        self._to_harness(route, stream, kind, flagged, frame.data)

    async def _verify(
        self, frame: RemoteFrame, direction: BusDirection, stream_id: str
    ) -> Accept | Refuse:
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

    def channel_lost(self, node_id: str, environment_id: str) -> None:
        """Frames between this node and ``node_id`` for the environment were lost: the
        streams between them that cannot retransmit are reset at both local ends."""
        self.cluster_stats.channels_lost += 1
        route = self._routes.get(environment_id)
        if route is None:
            return
        socket = route.socket
        holding = socket is not None and not socket.remote
        remote_holder = _node_of(socket)
        via_node = remote_holder is not None and remote_holder.node_id == node_id
        for stream in list(route.streams.values()):
            if stream.reliable and not stream.legacy_seen:
                continue
            owner = stream.owner
            owner_node = _node_of(owner)
            if (
                holding
                and stream.remote
                and (owner is None or (owner_node is not None and owner_node.node_id == node_id))
            ):
                self._end_stream(route, stream)
                assert socket is not None
                self._send_reset(socket, stream, ResetReason.RELAY_ROUTE_LOST)
            elif via_node and owner is not None and not owner.remote:
                self._end_stream(route, stream)
                self._send_reset(owner, stream, ResetReason.RELAY_ROUTE_LOST)
        self._maybe_forget(route)

    # --- state changes -------------------------------------------------------------------

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
            if _node_of(current) == decision.node:
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

    def _owner_changed(self, event: StreamOwnerChanged) -> None:
        route = self._routes.get(event.environment_id)
        stream = route.streams.get(event.stream_id) if route is not None else None
        if route is None or stream is None:
            return
        new = event.new
        if new is None:
            if stream.remote:
                self._loop.call_later(RECORD_LINGER_S, self._record_gone, route, stream)
            return
        node = self.node
        if new.node == node:
            return
        holding = route.socket is not None and not route.socket.remote
        if holding:
            peer = self._remote_peer(new.node, route.environment_id, UrlRole.HARNESS)
            self._move_stream(route, stream, peer, new.credential)
        else:
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

    def _node_down(self, node: NodeRef) -> None:
        log.info("node %s is down: its environments and streams wait for their peers", node)
        if self.bus is not None:
            self.bus.forget_node(node.node_id)
        for route in list(self._routes.values()):
            if _node_of(route.socket) == node:
                self._follow_holder(route, None)
            for stream in list(route.streams.values()):
                if _node_of(stream.owner) == node:
                    self._orphan(route, stream)
        for peer in [p for p in self._remote.values() if p.node == node]:
            self._drop_remote_peer(peer)

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
        self._writes.clear()
        for peer in list(self._peers):
            self._spawn(
                peer.aclose(
                    code=LEASE_LOST_CLOSE_CODE, message=b"rendezvous node lost its cluster lease"
                )
            )
        for peer in list(self._remote.values()):
            self._drop_remote_peer(peer)

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

    def _end_stream(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        super()._end_stream(route, stream)
        self._forget_record(route.environment_id, stream.stream_id)

    def _forget_record(self, environment_id: str, stream_id: str) -> None:
        revision = self._records.pop((environment_id, stream_id), None)
        if revision is not None:
            self._write(
                f"delete stream {stream_id}",
                lambda: self.state.delete_stream(environment_id, stream_id, revision),
            )

    def _pause_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.remote_paused:
            super()._pause_output(route, stream)

    def _resume_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.remote_paused:
            super()._resume_output(route, stream)

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

    def _maybe_forget(self, route: _EnvironmentRoute) -> None:
        socket = route.socket
        if (
            socket is not None
            and socket.remote
            and not route.streams
            and not route.harnesses
            and route.grace_timer is None
            and self._routes.get(route.environment_id) is route
        ):
            del self._routes[route.environment_id]  # its remote peer is swept when idle
            return
        super()._maybe_forget(route)

    # --- remote peers ----------------------------------------------------------------------

    def _remote_peer(self, node: NodeRef, environment_id: str, role: UrlRole) -> RemotePeer:
        key = (node.node_id, environment_id, role)
        peer = self._remote.get(key)
        if peer is not None and peer.node == node and not peer.closed:
            return peer
        if peer is not None:
            self._drop_remote_peer(peer)
        peer = RemotePeer(self, node, environment_id, role)
        peer.on_sent = self._on_sent
        peer.start()
        self._remote[key] = peer
        return peer

    def _drop_remote_peer(self, peer: SocketPeer) -> None:
        if not isinstance(peer, RemotePeer):
            return
        key = (peer.node.node_id, peer.environment_id, peer.role)
        if self._remote.get(key) is peer:
            del self._remote[key]
        if not peer.closed:
            self._spawn(peer.aclose())

    def _drop_remote_streams(self, route: _EnvironmentRoute) -> None:
        """The environment left this node: streams of harnesses on other nodes are now
        the new holder's business (their owners' records are untouched)."""
        for stream in list(route.streams.values()):
            if stream.remote:
                owner = stream.owner
                self._cancel_stream_timers(stream)
                stream.ended = True
                del route.streams[stream.stream_id]
                if owner is not None:
                    owner.owned.discard(stream.stream_id)
                    owner.paused.discard(stream)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            in_use = {route.socket for route in self._routes.values() if route.socket is not None}
            for peer in list(self._remote.values()):
                if peer not in in_use and not peer.owned and not peer.queued_frames:
                    self._drop_remote_peer(peer)

    # --- background work -------------------------------------------------------------------

    def _write(self, what: str, operation: Callable[[], Awaitable[object]]) -> None:
        """Queue a record write; writes run one at a time, in order."""
        if not self._closed:
            self._writes.append((what, operation))
            self._write_ready.set()

    async def _write_loop(self) -> None:
        writes = self._writes
        while not self._closed:
            if not writes:
                self._write_ready.clear()
                await self._write_ready.wait()
                continue
            what, operation = writes.popleft()
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await operation()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.cluster_stats.write_failures += 1
                log.info("cluster state write failed (%s): %r", what, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self._closed = True
        self._unlisten()
        self._write_ready.set()
        for peer in list(self._remote.values()):
            self._drop_remote_peer(peer)
        super().close()

    async def aclose(self) -> None:
        self.close()
        await cancel_and_wait([*self._loops, *self._tasks])


def _node_of(peer: SocketPeer | None) -> NodeRef | None:
    """The node a remote peer stands for; None for a local socket (or no peer)."""
    return peer.node if isinstance(peer, RemotePeer) else None
