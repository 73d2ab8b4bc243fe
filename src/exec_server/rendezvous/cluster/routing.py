"""Sans-IO routing decisions of a rendezvous node: local socket, remote node, or refuse.

Pure functions of the shared records (:mod:`~exec_server.rendezvous.cluster.records`)
and of a liveness predicate; no clock, no socket, no NATS. The router asks them, then
acts (queue to a local socket, hand the bytes to the frame bus, reply with a reset).

Outbound (a frame read from a local socket):

* :func:`route_to_environment`: a harness frame goes to the node holding the
  environment's socket; this node itself -> :class:`ToLocal` (never through NATS).
* :func:`route_to_harness`: an environment frame goes to the node of the stream's owner.

Inbound (a frame another node forwarded, :func:`verify_inbound`): the sender's identity
is the node named by the NATS subject the frame arrived on (the frame bus reads it from
there; with per-node NATS credentials, subject permissions make it unforgeable, see
:mod:`~exec_server.rendezvous.cluster.frame_bus`). A node may forward

* a harness frame only for a stream whose owner record names the sender, to an
  environment whose holder record names *this* node;
* an environment frame only for an environment whose holder record names the sender,
  for a stream whose owner record names this node.

Anything else is refused: a node that lost a stream to a takeover, a node whose lease
expired, or a node publishing for a stream it never owned. Records come from a watch
cache that may lag a fresh write by another node, so a mismatch against the *cache*
answers :class:`Lookup` (fetch the authoritative record, ask again with
``authoritative=True``); only a mismatch against an authoritative record refuses.

Most forwarded frames need no records at all (:func:`check_forwarded`): when this
node's own routing state already routes the stream between the sender and a local
socket (checked against the records when the stream arrived here, kept up to date by
state events), the frame is :class:`KnownRoute`; only the others are checked against
the records. When frames between this node and another are lost, :func:`end_cut_off`
says which local end of a stream that cannot retransmit must be reset.

Claims (:func:`decide_stream_claim`): the first harness socket to send on a stream owns
it; a different credential is refused; the same credential takes a stream over only with
``resume`` (the ownership rules of the single-node router, applied to records).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .records import EnvironmentHolder, NodeRef, StreamOwner, Versioned

__all__ = [
    "CHECK_RECORDS",
    "KNOWN_ROUTE",
    "Accept",
    "CheckRecords",
    "ClaimRefused",
    "CreateStream",
    "Direction",
    "IsLive",
    "KeepStream",
    "KnownRoute",
    "LocalEnd",
    "LocalEnds",
    "Lookup",
    "NoRoute",
    "NoRouteReason",
    "Refuse",
    "RefuseReason",
    "TakeOverStream",
    "ToLocal",
    "ToNode",
    "check_forwarded",
    "decide_stream_claim",
    "end_cut_off",
    "route_to_environment",
    "route_to_harness",
    "verify_inbound",
]

IsLive = Callable[[NodeRef], bool]
"""Whether a node incarnation holds a valid lease (``ClusterState.is_live``)."""


class Direction(StrEnum):
    HARNESS_TO_ENVIRONMENT = "harness_to_environment"
    ENVIRONMENT_TO_HARNESS = "environment_to_harness"


class NoRouteReason(StrEnum):
    ENVIRONMENT_OFFLINE = "environment_offline"
    """No node holds the environment's socket."""
    HOLDER_DEAD = "holder_dead"
    """The holding node's lease expired: the environment is expected elsewhere soon."""
    UNKNOWN_STREAM = "unknown_stream"
    """No harness owns the stream."""
    OWNER_DEAD = "owner_dead"
    """The owning harness's node lease expired: its harness is expected elsewhere soon."""


class RefuseReason(StrEnum):
    NOT_ENVIRONMENT_HOLDER = "not_environment_holder"
    """A harness frame for an environment whose socket is not on this node."""
    SENDER_NOT_STREAM_OWNER = "sender_not_stream_owner"
    """A harness frame from a node that does not own the stream (forged or stale)."""
    SENDER_NOT_ENVIRONMENT_HOLDER = "sender_not_environment_holder"
    """An environment frame from a node that does not hold the environment (forged or
    stale)."""
    STREAM_NOT_OWNED_HERE = "stream_not_owned_here"
    """An environment frame for a stream whose owner is not on this node."""


@dataclass(frozen=True, slots=True)
class ToLocal:
    """Deliver to a socket on this node."""

    socket_id: str


@dataclass(frozen=True, slots=True)
class ToNode:
    """Forward to another node through the frame bus."""

    node: NodeRef


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: NoRouteReason


@dataclass(frozen=True, slots=True)
class Accept:
    """An inbound frame is legitimate: deliver it to this local socket."""

    socket_id: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """The cached records disagree with the sender: fetch them and verify again."""


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: RefuseReason


def route_to_environment(
    self_node: NodeRef, holder: EnvironmentHolder | None, is_live: IsLive
) -> ToLocal | ToNode | NoRoute:
    """Where a harness frame for this environment goes."""
    if holder is None:
        return NoRoute(NoRouteReason.ENVIRONMENT_OFFLINE)
    node = holder.node
    if node == self_node:
        return ToLocal(holder.socket_id)
    if not is_live(node):
        return NoRoute(NoRouteReason.HOLDER_DEAD)
    return ToNode(node)


def route_to_harness(
    self_node: NodeRef, owner: StreamOwner | None, is_live: IsLive
) -> ToLocal | ToNode | NoRoute:
    """Where an environment frame for this stream goes."""
    if owner is None:
        return NoRoute(NoRouteReason.UNKNOWN_STREAM)
    node = owner.node
    if node == self_node:
        return ToLocal(owner.socket_id)
    if not is_live(node):
        return NoRoute(NoRouteReason.OWNER_DEAD)
    return ToNode(node)


def verify_inbound(
    self_node: NodeRef,
    sender: NodeRef,
    direction: Direction,
    holder: EnvironmentHolder | None,
    owner: StreamOwner | None,
    *,
    authoritative: bool,
) -> Accept | Lookup | Refuse:
    """Whether ``sender`` may forward this frame to this node (module docstring).

    ``holder`` and ``owner`` are the environment's and the stream's records as this node
    sees them; ``authoritative`` says they were just read from the shared state rather
    than from the watch cache.
    """
    if direction is Direction.HARNESS_TO_ENVIRONMENT:
        if holder is None or holder.node != self_node:
            return Refuse(RefuseReason.NOT_ENVIRONMENT_HOLDER)
        if owner is None or owner.node != sender:
            if not authoritative:
                return Lookup()
            return Refuse(RefuseReason.SENDER_NOT_STREAM_OWNER)
        return Accept(holder.socket_id)
    if owner is None or owner.node != self_node:
        return Refuse(RefuseReason.STREAM_NOT_OWNED_HERE)
    if holder is None or holder.node != sender:
        if not authoritative:
            return Lookup()
        return Refuse(RefuseReason.SENDER_NOT_ENVIRONMENT_HOLDER)
    return Accept(owner.socket_id)


LocalEnds = tuple[bool, NodeRef | None, bool, NodeRef | None]
"""The two ends of one stream as this node's routing state has them (no records):
``(environment_here, environment_node, owner_here, owner_node)``: the environment's
socket is on this node; else the node its frames are routed to (None if none); the
stream's owner is a harness socket on this node; else the node of the owner (None if
none). A plain tuple: it is built for every forwarded frame."""


@dataclass(frozen=True, slots=True)
class KnownRoute:
    """The local routing state already routes this stream between the sender and a
    local socket: deliver without reading any record."""


@dataclass(frozen=True, slots=True)
class CheckRecords:
    """The local routing state does not name the sender: :func:`verify_inbound`."""


KNOWN_ROUTE = KnownRoute()
CHECK_RECORDS = CheckRecords()


def check_forwarded(
    sender: NodeRef, direction: Direction, ends: LocalEnds
) -> KnownRoute | CheckRecords | Refuse:
    """The first check of a frame another node forwarded, against local state only."""
    environment_here, environment_node, owner_here, owner_node = ends
    if direction is Direction.HARNESS_TO_ENVIRONMENT:
        if not environment_here:
            return Refuse(RefuseReason.NOT_ENVIRONMENT_HOLDER)
        return KNOWN_ROUTE if owner_node == sender else CHECK_RECORDS
    if owner_here and environment_node == sender:
        return KNOWN_ROUTE
    return CHECK_RECORDS


class LocalEnd(StrEnum):
    ENVIRONMENT = "environment"
    HARNESS = "harness"


def end_cut_off(ends: LocalEnds, *, owner_remote: bool, lost_node_id: str) -> LocalEnd | None:
    """The local end of a stream whose frames to or from ``lost_node_id`` were lost:
    the environment socket here when the stream's harness is (or, orphaned, was) on
    that node; the harness socket here when the environment is on that node; None when
    the stream does not go through that node. ``owner_remote`` says the stream's owner
    is (or was) on another node."""
    environment_here, environment_node, owner_here, owner_node = ends
    if environment_here and owner_remote:
        orphaned = owner_node is None and not owner_here
        if orphaned or (owner_node is not None and owner_node.node_id == lost_node_id):
            return LocalEnd.ENVIRONMENT
        return None
    if owner_here and environment_node is not None and environment_node.node_id == lost_node_id:
        return LocalEnd.HARNESS
    return None


class ClaimRefused(StrEnum):
    OWNED_BY_ANOTHER_CREDENTIAL = "stream_owned_by_another_harness"
    """Another principal owns the stream (the router answers with that reset)."""
    TAKEOVER_NEEDS_RESUME = "takeover_needs_resume"
    """Same principal, another socket, but the frame is not a ``resume``: dropped."""


@dataclass(frozen=True, slots=True)
class CreateStream:
    """No owner yet: create the record (compare-and-set against absence)."""


@dataclass(frozen=True, slots=True)
class KeepStream:
    """The claimant already owns the stream."""


@dataclass(frozen=True, slots=True)
class TakeOverStream:
    """Replace the owner record at ``expected_revision`` (compare-and-set)."""

    expected_revision: int
    previous: StreamOwner


def decide_stream_claim(
    existing: Versioned[StreamOwner] | None, claimant: StreamOwner, *, is_resume: bool
) -> CreateStream | KeepStream | TakeOverStream | ClaimRefused:
    """What a harness frame on a stream means for its owner record.

    Takeover does not depend on the previous owner's liveness: a harness that
    reconnects (to any node) before the old socket is noticed dead gets its stream back
    at once, exactly as on a single node.
    """
    if existing is None:
        return CreateStream()
    owner = existing.value
    if (
        owner.node_id == claimant.node_id
        and owner.incarnation == claimant.incarnation
        and owner.socket_id == claimant.socket_id
    ):
        return KeepStream()
    if owner.credential != claimant.credential:
        return ClaimRefused.OWNED_BY_ANOTHER_CREDENTIAL
    if not is_resume:
        return ClaimRefused.TAKEOVER_NEEDS_RESUME
    return TakeOverStream(existing.revision, owner)
