"""Sans-IO node leases: who is alive, judged on the observer's own monotonic clock.

Each node puts its :class:`~exec_server.rendezvous.cluster.records.NodeInfo` into the
nodes bucket every ``heartbeat_interval_s``. An observer counts a node incarnation live
for ``lease_s`` after it *received* its latest heartbeat (through its KV watch). Node
clocks are never compared, and nothing depends on NATS telling anyone that a key
expired (the bucket's max age only tidies the store; before nats-server 2.11 expiry is
silent to watchers anyway).

A node's view of its *own* lease is conservative: valid until ``lease_s`` after it
*sent* its latest acknowledged heartbeat. Every observer received that heartbeat later
than it was sent, so a node always sees its own lease end before any other node sees it
end: it stops serving (not ready, no new sockets, sockets closed) before anyone can take
its environments or streams over. Once lapsed, its incarnation is dead for good: the
node comes back, when NATS answers again, under a fresh incarnation, and every record
naming the old one stays dead.

Times are arguments (monotonic seconds); the owner calls :meth:`LeaseTable.expire` on
every heartbeat tick, so death is noticed within ``lease_s + heartbeat_interval_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .records import NodeInfo, NodeRef, new_incarnation

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_LEASE_S",
    "LeaseAcquired",
    "LeaseLost",
    "LeaseTable",
    "LivenessEvent",
    "NodeDown",
    "NodeUp",
]

DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_LEASE_S = 4.0
"""A dead node's environments and streams can move this long after its last heartbeat
(plus one heartbeat interval to notice): the issue's goal is flowing again within 5 s."""


@dataclass(frozen=True, slots=True)
class NodeUp:
    info: NodeInfo


@dataclass(frozen=True, slots=True)
class NodeDown:
    node: NodeRef
    replaced: bool
    """True when a newer incarnation of the same node id announced itself; False when
    the lease just ran out."""


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """This node's own lease ran out: it must stop serving at once."""

    node: NodeRef


@dataclass(frozen=True, slots=True)
class LeaseAcquired:
    """This node holds a lease again, under ``node`` (a fresh incarnation after a loss)."""

    node: NodeRef


LivenessEvent = NodeUp | NodeDown | LeaseLost | LeaseAcquired


@dataclass(slots=True)
class _Observed:
    info: NodeInfo
    until: float


class LeaseTable:
    """Leases of every node as this node sees them, its own included."""

    def __init__(
        self,
        node_id: str,
        *,
        lease_s: float,
        incarnation_factory: Callable[[], str] = new_incarnation,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.lease_s = lease_s
        self._new_incarnation = incarnation_factory
        self.node = NodeRef(node_id, incarnation_factory())
        self._own_until: float | None = None
        self._lapsed = False
        self._others: dict[str, _Observed] = {}

    # --- own lease ---------------------------------------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this node's lease was valid at the last :meth:`expire`/ack."""
        return self._own_until is not None and not self._lapsed

    def heartbeat_acked(self, sent_at: float, now: float) -> list[LivenessEvent]:
        """A heartbeat put at ``sent_at`` was acknowledged by the store at ``now``."""
        until = sent_at + self.lease_s
        if now >= until:
            return []  # acknowledged too late to count: still lapsed
        if self._own_until is None or self._lapsed:
            self._own_until = until
            self._lapsed = False
            return [LeaseAcquired(self.node)]
        self._own_until = max(self._own_until, until)
        return []

    def current_heartbeat(self, started: float, public_url: str | None) -> NodeInfo:
        """The value to put next; after a lapse, under a fresh incarnation."""
        if self._lapsed:
            self.node = NodeRef(self.node.node_id, self._new_incarnation())
            self._lapsed = False
            self._own_until = None
        return NodeInfo(self.node.node_id, self.node.incarnation, started, public_url)

    # --- other nodes ------------------------------------------------------------------

    def observe(self, info: NodeInfo, now: float) -> list[LivenessEvent]:
        """A heartbeat of ``info`` was received (through the watch) at ``now``."""
        if info.node_id == self.node.node_id:
            return []
        events: list[LivenessEvent] = []
        seen = self._others.get(info.node_id)
        if seen is not None and seen.info.incarnation != info.incarnation:
            events.append(NodeDown(seen.info.ref, replaced=True))
            seen = None
        if seen is None:
            events.append(NodeUp(info))
            self._others[info.node_id] = _Observed(info, now + self.lease_s)
        else:
            seen.info = info
            seen.until = now + self.lease_s
        return events

    def forget(self, node_id: str) -> list[LivenessEvent]:
        """The node's key was deleted (a clean shutdown)."""
        seen = self._others.pop(node_id, None)
        return [NodeDown(seen.info.ref, replaced=False)] if seen is not None else []

    def expire(self, now: float) -> list[LivenessEvent]:
        """Drop leases that ran out by ``now`` (own lease included)."""
        events: list[LivenessEvent] = []
        if self._own_until is not None and not self._lapsed and now >= self._own_until:
            self._lapsed = True
            events.append(LeaseLost(self.node))
        for node_id in [n for n, seen in self._others.items() if now >= seen.until]:
            events.append(NodeDown(self._others.pop(node_id).info.ref, replaced=False))
        return events

    # --- queries ----------------------------------------------------------------------

    def is_live(self, node: NodeRef) -> bool:
        if node == self.node:
            return self.holds_lease
        seen = self._others.get(node.node_id)
        return seen is not None and seen.info.incarnation == node.incarnation

    def live_nodes(self) -> list[NodeInfo]:
        """Other live nodes, by node id."""
        return [self._others[node_id].info for node_id in sorted(self._others)]
