"""The ClusterState contract, on the embedded single-node store and on NATS JetStream KV,
plus what only a real cluster has: races between nodes, leases, NATS restarts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import LEASE_S, WAIT_S, MakeNode, eventually, node_config
from nats.js.kv import KeyValue

from exec_server.rendezvous.cluster.liveness import LeaseAcquired, LeaseLost, NodeDown, NodeUp
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_state import NatsClusterState, NodeIdInUse
from exec_server.rendezvous.cluster.records import StreamOwner
from exec_server.rendezvous.cluster.routing import (
    ClaimRefused,
    CreateStream,
    TakeOverStream,
    decide_stream_claim,
)
from exec_server.rendezvous.cluster.state import (
    URL_SIGNING_SECRET,
    ClusterState,
    Conflict,
    EnvironmentHolderChanged,
    LocalClusterState,
    StateEvent,
    StreamOwnerChanged,
)
from exec_server.rendezvous.credentials import SECRET_FILE_NAME
from exec_server.rendezvous.registration_store import SqliteRegistrationStore
from exec_server.rendezvous.url_signing import UrlRole, UrlSigner


@pytest.fixture(params=["local", "nats"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[ClusterState]:
    if request.param == "local":
        local = LocalClusterState()
        yield local
        await local.close()
    else:
        async with EmbeddedNats() as server:
            node = await NatsClusterState.open(node_config(server, "solo"))
            try:
                yield node
            finally:
                await node.close()


def owner(state: ClusterState, socket_id: str, credential: str = "nonce-a") -> StreamOwner:
    node = state.node
    return StreamOwner(node.node_id, node.incarnation, socket_id, credential, time.time())


# --- the contract, on both implementations ------------------------------------------------


async def test_ready_and_live(state: ClusterState) -> None:
    assert state.readiness().ready
    assert state.is_live(state.node)
    assert [info.ref for info in state.live_nodes()] == [state.node]


async def test_secrets_are_created_once(state: ClusterState) -> None:
    first = await state.secret(URL_SIGNING_SECRET)
    assert len(first) == 32
    assert await state.secret(URL_SIGNING_SECRET) == first
    assert await state.secret("harness-key-authorization") != first
    with pytest.raises(ValueError):
        await state.secret("Bad Name")


async def test_registrations(state: ClusterState) -> None:
    assert await state.get_registration("env-a") is None
    await state.upsert_registration("env-b", "bee", 100.0)
    first = await state.upsert_registration("env-a", "first", 100.0)
    assert (first.name, first.created, first.last_seen) == ("first", 100.0, 100.0)
    again = await state.upsert_registration("env-a", None, 200.0)
    assert (again.name, again.created, again.last_seen) == ("first", 100.0, 200.0)
    renamed = await state.upsert_registration("env-a", "second", 300.0)
    assert renamed.name == "second"
    assert await state.get_registration("env-a") == renamed
    assert [row.environment_id for row in await state.list_registrations()] == ["env-a", "env-b"]


async def test_noise_registrations(state: ClusterState) -> None:
    assert await state.get_noise_registration("env") is None
    await state.put_noise_registration("env", "reg_1", '{"x25519": "k1"}')
    await state.put_noise_registration("env", "reg_2", '{"x25519": "k2"}')
    assert await state.get_noise_registration("env") == ("reg_2", '{"x25519": "k2"}')
    await state.delete_noise_registration("env")
    assert await state.get_noise_registration("env") is None
    await state.delete_noise_registration("env")  # deleting nothing is fine


async def test_authorizations_are_single_use(state: ClusterState) -> None:
    assert await state.consume_authorization("nonce-A_1", "stream-1")
    assert not await state.consume_authorization("nonce-A_1", "stream-2")
    assert await state.consume_authorization("nonce-B_2", "stream-2")


async def test_environment_claims_replace_and_release(state: ClusterState) -> None:
    events: list[StateEvent] = []
    state.add_listener(events.append)
    first = await state.claim_environment("env", "socket-1", 1.0)
    assert first.won and first.replaced is None
    assert state.environment_holder("env") == first.record
    second = await state.claim_environment("env", "socket-2", 2.0)
    assert second.won and second.replaced == first.record.value
    assert not await state.release_environment("env", first.record.revision)
    assert state.environment_holder("env") == second.record
    assert await state.release_environment("env", second.record.revision)
    assert state.environment_holder("env") is None
    changes = [e for e in events if isinstance(e, EnvironmentHolderChanged)]
    assert [(c.old, c.new) for c in changes] == [
        (None, first.record.value),
        (first.record.value, second.record.value),
        (second.record.value, None),
    ]


async def test_stream_records_are_compare_and_set(state: ClusterState) -> None:
    events: list[StateEvent] = []
    state.add_listener(events.append)
    mine = owner(state, "h1")
    created = await state.create_stream("env", "stream/1 é", mine)
    assert state.stream_owner("env", "stream/1 é") == created
    assert await state.fetch_stream_owner("env", "stream/1 é") == created
    with pytest.raises(Conflict) as conflict:
        await state.create_stream("env", "stream/1 é", owner(state, "h2"))
    assert conflict.value.current == created
    with pytest.raises(Conflict):
        await state.replace_stream("env", "stream/1 é", owner(state, "h2"), created.revision + 99)
    moved = await state.replace_stream("env", "stream/1 é", owner(state, "h2"), created.revision)
    assert moved.value.socket_id == "h2"
    assert state.streams_of("env") == {"stream/1 é": moved}
    assert state.streams_of("other") == {}
    assert not await state.delete_stream("env", "stream/1 é", created.revision)
    assert await state.delete_stream("env", "stream/1 é", moved.revision)
    assert state.stream_owner("env", "stream/1 é") is None
    assert await state.fetch_stream_owner("env", "stream/1 é") is None
    # A deleted stream id can be claimed again.
    await state.create_stream("env", "stream/1 é", mine)
    changes = [e for e in events if isinstance(e, StreamOwnerChanged)]
    assert [(c.stream_id, c.new.socket_id if c.new else None) for c in changes] == [
        ("stream/1 é", "h1"),
        ("stream/1 é", "h2"),
        ("stream/1 é", None),
        ("stream/1 é", "h1"),
    ]


# --- the embedded store keeps today's files --------------------------------------------


async def test_local_state_uses_the_data_dir_files(tmp_path: Path) -> None:
    store = await SqliteRegistrationStore.open(tmp_path)
    state = LocalClusterState(store, data_dir=tmp_path)
    secret = await state.secret(URL_SIGNING_SECRET)
    other = await state.secret("harness-key-authorization")
    await state.upsert_registration("env", "named", 5.0)
    await state.close()
    assert bytes.fromhex((tmp_path / SECRET_FILE_NAME).read_text()) == secret
    again = LocalClusterState(await SqliteRegistrationStore.open(tmp_path), data_dir=tmp_path)
    try:
        assert await again.secret(URL_SIGNING_SECRET) == secret
        assert await again.secret("harness-key-authorization") == other
        assert (await again.get_registration("env")).name == "named"  # type: ignore[union-attr]
    finally:
        await again.close()


# --- several nodes on one NATS ---------------------------------------------------------


async def test_every_node_shares_the_secret_and_verifies_any_url(make_node: MakeNode) -> None:
    nodes = await asyncio.gather(*(make_node() for _ in range(4)))
    secrets = await asyncio.gather(*(node.secret(URL_SIGNING_SECRET) for node in nodes))
    assert len(set(secrets)) == 1
    url = UrlSigner(secrets[0]).sign("ws://a", UrlRole.HARNESS, "env", lifetime_s=60, now=1000)
    query = url.split("?", 1)[1]
    for secret in secrets[1:]:
        grant = UrlSigner(secret).verify("env", query, now=1001)
        assert grant.role is UrlRole.HARNESS


async def test_an_authorization_is_used_once_across_the_cluster(make_node: MakeNode) -> None:
    nodes = await asyncio.gather(*(make_node() for _ in range(3)))
    results = await asyncio.gather(
        *(node.consume_authorization("the-nonce", f"s{i}") for i, node in enumerate(nodes))
    )
    assert sorted(results) == [False, False, True]
    assert not await nodes[0].consume_authorization("not a valid key!", "s")


async def test_concurrent_environment_claims_agree_on_one_holder(make_node: MakeNode) -> None:
    nodes = await asyncio.gather(make_node("a"), make_node("b"), make_node("c"))
    for round_number in range(5):
        environment_id = f"env-{round_number}"
        claims = await asyncio.gather(
            *(node.claim_environment(environment_id, f"s{round_number}", 1.0) for node in nodes)
        )
        # Each claim is a compare-and-set against the record it read: claims that read
        # the same record have one winner; a claim that read a newer record replaces it
        # (newest socket wins). The winners form one chain of replacements.
        winners = sorted((c for c in claims if c.won), key=lambda c: c.record.revision)
        assert winners
        assert winners[0].replaced is None
        for earlier, later in itertools.pairwise(winners):
            assert later.replaced == earlier.record.value
        last = winners[-1].record
        for claim in claims:
            if not claim.won:
                assert claim.record.revision <= last.revision
                assert claim.record in [w.record for w in winners]
        await eventually(
            lambda env=environment_id, last=last: all(
                node.environment_holder(env) == last for node in nodes
            ),
            "every node sees the last winner",
        )
        assert (await nodes[0].fetch_environment_holder(environment_id)) == last


async def test_racing_stream_claims_have_exactly_one_owner(make_node: MakeNode) -> None:
    a, b = await asyncio.gather(make_node("a"), make_node("b"))
    results = await asyncio.gather(
        a.create_stream("env", "s", owner(a, "ha")),
        b.create_stream("env", "s", owner(b, "hb")),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert len(won) == 1 and len(lost) == 1
    assert lost[0].current == won[0]
    await eventually(
        lambda: a.stream_owner("env", "s") == b.stream_owner("env", "s") == won[0],
        "both caches hold the winner",
    )


async def test_takeover_by_the_same_credential_is_seen_by_the_old_owner(
    make_node: MakeNode,
) -> None:
    a, b = await asyncio.gather(make_node("a"), make_node("b"))
    seen_by_a: list[StateEvent] = []
    a.add_listener(seen_by_a.append)
    original = await a.create_stream("env", "s", owner(a, "ha", "cred"))
    await eventually(lambda: b.stream_owner("env", "s") == original, "b sees a's claim")
    claimant = owner(b, "hb", "cred")
    decision = decide_stream_claim(b.stream_owner("env", "s"), claimant, is_resume=True)
    assert isinstance(decision, TakeOverStream)
    await b.replace_stream("env", "s", claimant, decision.expected_revision)
    await eventually(
        lambda: any(
            isinstance(e, StreamOwnerChanged) and e.new is not None and e.new.node_id == "b"
            for e in seen_by_a
        ),
        "a learns it lost the stream",
    )
    stranger = owner(a, "hx", "other-cred")
    assert (
        decide_stream_claim(a.stream_owner("env", "s"), stranger, is_resume=True)
        is ClaimRefused.OWNED_BY_ANOTHER_CREDENTIAL
    )
    assert isinstance(decide_stream_claim(None, stranger, is_resume=False), CreateStream)


async def test_a_dead_node_is_noticed_after_its_lease(make_node: MakeNode) -> None:
    a = await make_node("a")
    b = await make_node("b")
    events: list[StateEvent] = []
    a.add_listener(events.append)
    await eventually(lambda: a.is_live(b.node), "a sees b")
    held = await b.claim_environment("env", "sb", 1.0)
    dead = b.node
    await b.close(leave=False)  # a crash: no goodbye
    await eventually(lambda: not a.is_live(dead), "b's lease runs out")
    assert NodeDown(dead, replaced=False) in events
    # b's record stays, naming a dead incarnation, until someone claims over it.
    assert a.environment_holder("env") == held.record
    taken = await a.claim_environment("env", "sa", 2.0)
    assert taken.won and taken.replaced == held.record.value


async def test_a_clean_leave_is_seen_at_once_and_a_restart_is_a_new_incarnation(
    make_node: MakeNode,
) -> None:
    a = await make_node("a")
    b = await make_node("b")
    events: list[StateEvent] = []
    a.add_listener(events.append)
    await eventually(lambda: a.is_live(b.node), "a sees b")
    first = b.node
    await b.close()
    await eventually(lambda: NodeDown(first, replaced=False) in events, "a sees b leave")
    b2 = await make_node("b")
    assert b2.node.incarnation != first.incarnation
    await eventually(lambda: a.is_live(b2.node) and not a.is_live(first), "a sees the new b")
    assert any(isinstance(e, NodeUp) and e.info.ref == b2.node for e in events)


async def test_a_node_id_in_use_is_refused(make_node: MakeNode) -> None:
    await make_node("twin")
    with pytest.raises(NodeIdInUse):
        await make_node("twin")


async def test_losing_nats_makes_a_node_unready_until_it_returns(
    make_node: MakeNode, nats_server: EmbeddedNats
) -> None:
    a = await make_node("a")
    events: list[StateEvent] = []
    a.add_listener(events.append)
    claim = await a.claim_environment("env", "sa", 1.0)
    stream = await a.create_stream("env", "s", owner(a, "ha"))
    before = a.node
    await nats_server.kill()
    await eventually(lambda: not a.readiness().ready, "not ready without NATS")
    await eventually(lambda: LeaseLost(before) in events, "the lease is lost")
    assert not a.is_live(before)
    await nats_server.restart()
    await eventually(lambda: a.readiness().ready, "ready again")
    assert a.node != before  # a fresh incarnation: the old one is dead for good
    assert LeaseAcquired(a.node) in events
    # Records of the lapsed incarnation are not re-asserted: the router re-claims.
    assert a.environment_holder("env") == claim.record
    assert a.stream_owner("env", "s") == stream
    assert await a.fetch_environment_holder("env") == claim.record


async def test_records_are_reasserted_when_nats_loses_its_store(
    make_node: MakeNode, nats_server: EmbeddedNats
) -> None:
    # A long lease, so the node keeps it across the outage.
    a = await make_node("a", heartbeat_interval_s=0.2, lease_s=30.0)
    b = await make_node("b", heartbeat_interval_s=0.2, lease_s=30.0)
    claim = await a.claim_environment("env", "sa", 1.0)
    stream = await a.create_stream("env", "s", owner(a, "ha"))
    await nats_server.kill()
    store = nats_server.work_dir / "jetstream"
    await asyncio.to_thread(_remove_tree, store)
    await nats_server.restart()
    await eventually(lambda: a.readiness().ready and b.readiness().ready, "both ready again")

    async def records_back() -> bool:
        holder = await b.fetch_environment_holder("env")
        owner = await b.fetch_stream_owner("env", "s")
        return (
            holder is not None
            and holder.value == claim.record.value
            and owner is not None
            and owner.value == stream.value
        )

    await eventually(records_back, "a re-asserted its records")
    c = await make_node("c")
    assert c.environment_holder("env").value == claim.record.value  # type: ignore[union-attr]
    # The URL-signing secret is gone with the store: a fresh one is created on demand.
    assert len(await b.secret(URL_SIGNING_SECRET)) == 32


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


async def test_lease_constants_leave_room_for_the_test_timeouts() -> None:
    assert LEASE_S < WAIT_S / 4


async def test_closing_while_a_watch_is_recreated_does_not_hang(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's ``watchall()`` can finish despite a cancellation (its ``wait_for`` on
    Python 3.11 swallows one that races the reply); the task group cancels a child only
    once, so a watch created after ``close()`` ended the others must end itself."""
    node = await make_node("a")
    original = KeyValue.watchall
    entered = asyncio.Event()
    reply = asyncio.Event()

    async def watchall_ignoring_cancellation(kv: KeyValue, **kwargs: Any) -> Any:
        entered.set()
        while not reply.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await reply.wait()
        return await original(kv, **kwargs)

    monkeypatch.setattr(KeyValue, "watchall", watchall_ignoring_cancellation)
    node._resync.set()  # what a NATS reconnect does: the watches are recreated
    await asyncio.wait_for(entered.wait(), WAIT_S)
    closing = asyncio.ensure_future(node.close())
    await asyncio.sleep(0.5)  # close() cancels the watches (re-cancelling every 0.2 s)
    reply.set()
    await asyncio.wait_for(closing, WAIT_S)
