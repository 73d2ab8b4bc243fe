"""Sans-IO routing decisions, leases and the watch cache: no NATS, no clock."""

from __future__ import annotations

import pytest

from exec_server.rendezvous.cluster.liveness import (
    LeaseAcquired,
    LeaseLost,
    LeaseTable,
    NodeDown,
    NodeUp,
)
from exec_server.rendezvous.cluster.records import (
    EnvironmentHolder,
    NodeInfo,
    NodeRef,
    StreamOwner,
    Versioned,
    split_stream_key,
    stream_key,
)
from exec_server.rendezvous.cluster.routing import (
    Accept,
    ClaimRefused,
    CreateStream,
    Direction,
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
from exec_server.rendezvous.cluster.watch_cache import WatchCache

A = NodeRef("a", "inc-a")
B = NodeRef("b", "inc-b")
C = NodeRef("c", "inc-c")
B_OLD = NodeRef("b", "inc-b-old")


def holder(node: NodeRef, socket_id: str = "env-socket") -> EnvironmentHolder:
    return EnvironmentHolder(node.node_id, node.incarnation, socket_id, 0.0)


def owner(node: NodeRef, socket_id: str = "h", credential: str = "cred") -> StreamOwner:
    return StreamOwner(node.node_id, node.incarnation, socket_id, credential, 0.0)


def live(*nodes: NodeRef):  # type: ignore[no-untyped-def]
    return lambda node: node in nodes


def test_same_node_streams_never_leave_the_node() -> None:
    assert route_to_environment(A, holder(A, "e1"), live()) == ToLocal("e1")
    assert route_to_harness(A, owner(A, "h1"), live()) == ToLocal("h1")


def test_remote_holders_and_owners_are_reached_through_their_node() -> None:
    assert route_to_environment(A, holder(B), live(B)) == ToNode(B)
    assert route_to_harness(B, owner(A), live(A)) == ToNode(A)


def test_dead_or_missing_peers_have_no_route() -> None:
    assert route_to_environment(A, None, live()) == NoRoute(NoRouteReason.ENVIRONMENT_OFFLINE)
    assert route_to_environment(A, holder(B_OLD), live(B)) == NoRoute(NoRouteReason.HOLDER_DEAD)
    assert route_to_harness(A, None, live()) == NoRoute(NoRouteReason.UNKNOWN_STREAM)
    assert route_to_harness(A, owner(C), live(B)) == NoRoute(NoRouteReason.OWNER_DEAD)


@pytest.mark.parametrize("authoritative", [False, True])
def test_inbound_frames_from_the_owners_are_accepted(authoritative: bool) -> None:
    # A holds the environment; B's harness owns the stream.
    assert verify_inbound(
        A,
        B,
        Direction.HARNESS_TO_ENVIRONMENT,
        holder(A, "e1"),
        owner(B),
        authoritative=authoritative,
    ) == Accept("e1")
    assert verify_inbound(
        B,
        A,
        Direction.ENVIRONMENT_TO_HARNESS,
        holder(A),
        owner(B, "h7"),
        authoritative=authoritative,
    ) == Accept("h7")


def test_a_forged_harness_frame_is_looked_up_then_refused() -> None:
    # C publishes for a stream that B owns.
    args = (A, C, Direction.HARNESS_TO_ENVIRONMENT, holder(A), owner(B))
    assert verify_inbound(*args, authoritative=False) == Lookup()
    assert verify_inbound(*args, authoritative=True) == Refuse(RefuseReason.SENDER_NOT_STREAM_OWNER)
    # An old incarnation of the owner node is not the owner either.
    stale = (A, B_OLD, Direction.HARNESS_TO_ENVIRONMENT, holder(A), owner(B))
    assert verify_inbound(*stale, authoritative=True) == Refuse(
        RefuseReason.SENDER_NOT_STREAM_OWNER
    )
    unknown = (A, C, Direction.HARNESS_TO_ENVIRONMENT, holder(A), None)
    assert verify_inbound(*unknown, authoritative=False) == Lookup()
    assert verify_inbound(*unknown, authoritative=True) == Refuse(
        RefuseReason.SENDER_NOT_STREAM_OWNER
    )


def test_a_forged_environment_frame_is_refused() -> None:
    args = (B, C, Direction.ENVIRONMENT_TO_HARNESS, holder(A), owner(B))
    assert verify_inbound(*args, authoritative=False) == Lookup()
    assert verify_inbound(*args, authoritative=True) == Refuse(
        RefuseReason.SENDER_NOT_ENVIRONMENT_HOLDER
    )


def test_frames_for_what_this_node_does_not_hold_are_refused_at_once() -> None:
    assert verify_inbound(
        A, B, Direction.HARNESS_TO_ENVIRONMENT, holder(C), owner(B), authoritative=False
    ) == Refuse(RefuseReason.NOT_ENVIRONMENT_HOLDER)
    assert verify_inbound(
        B, A, Direction.ENVIRONMENT_TO_HARNESS, holder(A), owner(C), authoritative=False
    ) == Refuse(RefuseReason.STREAM_NOT_OWNED_HERE)


def test_stream_claims_follow_the_single_node_rules() -> None:
    mine = owner(A, "h1", "cred")
    assert decide_stream_claim(None, mine, is_resume=False) == CreateStream()
    assert decide_stream_claim(Versioned(mine, 3), mine, is_resume=False) == KeepStream()
    other_socket = owner(B, "h2", "cred")
    assert (
        decide_stream_claim(Versioned(mine, 3), other_socket, is_resume=False)
        is ClaimRefused.TAKEOVER_NEEDS_RESUME
    )
    assert decide_stream_claim(Versioned(mine, 3), other_socket, is_resume=True) == TakeOverStream(
        3, mine
    )
    stranger = owner(B, "h3", "other")
    assert (
        decide_stream_claim(Versioned(mine, 3), stranger, is_resume=True)
        is ClaimRefused.OWNED_BY_ANOTHER_CREDENTIAL
    )


@pytest.mark.parametrize("stream_id", ["s", "019a-uuid", "a.b/c d", "é" * 60])
def test_stream_keys_round_trip(stream_id: str) -> None:
    key = stream_key("env_1-x", stream_id)
    assert key.startswith("env_1-x.")
    assert all(ch.isalnum() or ch in "-_." for ch in key)
    assert split_stream_key(key) == ("env_1-x", stream_id)
    assert split_stream_key("no-dot") is None


def test_lease_table_tracks_other_nodes_on_the_observer_clock() -> None:
    table = LeaseTable("a", lease_s=3.0, incarnation_factory=iter(["i1", "i2"]).__next__)
    b1 = NodeInfo("b", "b1", 0.0)
    assert table.observe(b1, now=10.0) == [NodeUp(b1)]
    assert table.observe(b1, now=11.0) == []
    assert table.is_live(b1.ref)
    assert table.expire(now=13.9) == []
    assert table.expire(now=14.0) == [NodeDown(b1.ref, replaced=False)]
    assert not table.is_live(b1.ref)
    b2 = NodeInfo("b", "b2", 0.0)
    table.observe(b1, now=20.0)
    assert table.observe(b2, now=21.0) == [NodeDown(b1.ref, replaced=True), NodeUp(b2)]
    assert [info.ref for info in table.live_nodes()] == [b2.ref]
    assert table.forget("b") == [NodeDown(b2.ref, replaced=False)]


def test_own_lease_ends_before_anyone_else_sees_it_end() -> None:
    table = LeaseTable("a", lease_s=3.0, incarnation_factory=iter(["i1", "i2"]).__next__)
    assert not table.holds_lease
    first = table.current_heartbeat(0.0, None)
    assert first.incarnation == "i1"
    # Sent at 10, acknowledged at 10.5: valid until 13 (send time + lease), even though
    # observers received it later and keep it until at least 13.
    assert table.heartbeat_acked(sent_at=10.0, now=10.5) == [LeaseAcquired(NodeRef("a", "i1"))]
    assert table.is_live(NodeRef("a", "i1"))
    assert table.expire(now=12.9) == []
    assert table.expire(now=13.0) == [LeaseLost(NodeRef("a", "i1"))]
    assert not table.holds_lease
    # An acknowledgement arriving after the lease ran out does not revive it ...
    assert table.heartbeat_acked(sent_at=9.0, now=13.5) == []
    # ... and the next heartbeat is a new incarnation.
    second = table.current_heartbeat(0.0, None)
    assert second.incarnation == "i2"
    assert table.heartbeat_acked(sent_at=20.0, now=20.1) == [LeaseAcquired(NodeRef("a", "i2"))]
    assert not table.is_live(NodeRef("a", "i1"))


def test_watch_cache_ignores_stale_updates_and_reports_changes() -> None:
    changes: list[tuple[str, str | None, str | None]] = []
    cache: WatchCache[str] = WatchCache(lambda k, o, n: changes.append((k, o, n)))
    assert cache.apply("k", "v1", 5)
    assert not cache.apply("k", "old", 4)
    assert cache.apply("k", None, 7)  # our own delete, applied before the watch saw it
    assert not cache.apply("k", "v1", 5)  # the watch catching up
    assert not cache.apply("k", "v2", 6)
    assert cache.get("k") is None
    assert cache.apply("k", "v3", 8)
    assert cache.apply("j", "x", 9)
    assert not cache.apply("j", "x", 9)
    assert changes == [("k", None, "v1"), ("k", "v1", None), ("k", None, "v3"), ("j", None, "x")]
    changes.clear()
    cache.replace_all({"k": Versioned("v3", 1), "m": Versioned("y", 2)})
    assert sorted(changes) == [("j", "x", None), ("m", None, "y")]
    assert cache.get("k") == Versioned("v3", 1)
    assert cache.with_prefix("m") == {"m": Versioned("y", 2)}
