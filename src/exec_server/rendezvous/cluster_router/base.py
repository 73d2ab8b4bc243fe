"""What every part of the cluster router shares: :class:`ClusterRouterBase`.

The single-node :class:`~exec_server.rendezvous.router.Router` plus the cluster's
bookkeeping: the shared state and the frame bus, the remote peers
(:mod:`~exec_server.rendezvous.cluster_router.peers`), the records this node wrote
(holder records of its environment sockets, owner records of its harnesses' streams)
and their background writes and deletes
(:mod:`~exec_server.rendezvous.cluster_router.record_writer`), and the tasks it owns.

The router is one class built in layers, one job per module, each a subclass of the
one before: this base; :mod:`~exec_server.rendezvous.cluster_router.state_changes`
(following the shared records); :mod:`~exec_server.rendezvous.cluster_router.forwarded`
(frames other nodes forward); :mod:`~exec_server.rendezvous.cluster_router.node`
(local sockets and the hooks of the single-node router), which is
:class:`~exec_server.rendezvous.cluster_router.ClusterRouter`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..cluster.frame_bus import FrameBus
from ..cluster.records import EnvironmentHolder, NodeRef, Versioned
from ..cluster.routing import LocalEnds
from ..cluster.state import ClusterState
from ..cluster.tasks import cancel_and_wait
from ..router import Router, RouterConfig, SocketPeer, _EnvironmentRoute, _StreamRoute
from ..url_signing import UrlRole
from .peers import RemotePeer, RemotePeers, node_of
from .record_writer import RecordWriter

__all__ = [
    "LEASE_LOST_CLOSE_CODE",
    "LOOKUP_INTERVAL_S",
    "RECORD_LINGER_S",
    "SWEEP_INTERVAL_S",
    "UNAVAILABLE_CLOSE_CODE",
    "ClusterRouterBase",
    "ClusterStats",
]

LEASE_LOST_CLOSE_CODE = 1012
"""Websocket close code ("service restart") for every socket of a node that lost its
cluster lease: reconnect, to another node."""

UNAVAILABLE_CLOSE_CODE = 1013
"""Websocket close code ("try again later") for an environment socket whose holder
record could not be written."""

RECORD_LINGER_S = 1.0
"""A stream record deleted by the harness's node ends the stream at the environment's
node only after this long, so the reset frame (on another NATS connection) arrives
first and the environment hears its real reason."""

SWEEP_INTERVAL_S = 10.0
"""How often remote peers nothing refers to any more are closed."""

LOOKUP_INTERVAL_S = 1.0
"""Shortest interval between two lookups of an environment nobody here knows to be
online (a harness sending to an offline environment)."""


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


class ClusterRouterBase(Router):
    """State and helpers shared by the layers of the cluster router (module docstring).

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
        """Local sockets by socket id (what the records name)."""
        self._remote = RemotePeers(lambda: self.bus, self.config, self._on_sent, self._spawn)
        self._holds: dict[str, Versioned[EnvironmentHolder]] = {}
        """Holder records of our environment sockets (released when they close)."""
        self._records: dict[tuple[str, str], int] = {}
        """Revisions of the stream records we wrote (deleted when the stream ends)."""
        self._writer = RecordWriter(self._write_failed)
        self._looked_up: dict[str, float] = {}
        """Loop time of the last holder lookup per environment id."""
        self._refusals_logged: set[tuple[str, str]] = set()
        self._delivered_to: list[SocketPeer] = []
        """Local sockets that forwarded frames were written to in the bus's current
        read (:meth:`flush_delivered` writes out what they gathered)."""
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._linger_timers: set[asyncio.TimerHandle] = set()
        """Timers of :meth:`_later` (cancelled on close)."""
        self._loops = [
            asyncio.ensure_future(self._writer.run()),
            asyncio.ensure_future(self._sweep_loop()),
        ]

    def attach_bus(self, bus: FrameBus) -> None:
        self.bus = bus

    @property
    def node(self) -> NodeRef:
        return self.state.node

    # --- routes ------------------------------------------------------------------------

    @staticmethod
    def _ends(route: _EnvironmentRoute | None, stream: _StreamRoute | None) -> LocalEnds:
        """The stream's two ends as the routes have them (for the sans-IO checks)."""
        socket = route.socket if route is not None else None
        owner = stream.owner if stream is not None else None
        return (
            socket is not None and not socket.remote,
            node_of(socket),
            owner is not None and not owner.remote,
            node_of(owner),
        )

    def _end_stream(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        super()._end_stream(route, stream)
        self._forget_record(route.environment_id, stream.stream_id)

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

    # --- remote peers --------------------------------------------------------------------

    def _remote_peer(self, node: NodeRef, environment_id: str, role: UrlRole) -> RemotePeer:
        return self._remote.get(node, environment_id, role)

    def _drop_remote_peer(self, peer: SocketPeer) -> None:
        self._remote.drop(peer)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            in_use = {route.socket for route in self._routes.values() if route.socket is not None}
            self._remote.sweep(in_use)

    # --- records -------------------------------------------------------------------------

    def _forget_record(self, environment_id: str, stream_id: str) -> None:
        """The stream ended here: delete the owner record we wrote for it, if any."""
        revision = self._records.pop((environment_id, stream_id), None)
        if revision is not None:
            self._write(
                f"delete stream {stream_id}",
                lambda: self.state.delete_stream(environment_id, stream_id, revision),
            )

    def _write(self, what: str, operation: Callable[[], Awaitable[object]]) -> None:
        """Queue a record write; writes run one at a time, in order."""
        self._writer.submit(what, operation)

    def _write_failed(self) -> None:
        self.cluster_stats.write_failures += 1

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run *callback* after *delay* seconds unless the router closes first."""

        def fire() -> None:
            self._linger_timers.discard(handle)
            callback()

        handle = self._loop.call_later(delay, fire)
        self._linger_timers.add(handle)

    def close(self) -> None:
        self._closed = True
        for handle in self._linger_timers:
            handle.cancel()
        self._linger_timers.clear()
        self._writer.close()
        self._remote.drop_all()
        super().close()

    async def aclose(self) -> None:
        self.close()
        await cancel_and_wait([*self._loops, *self._tasks])
