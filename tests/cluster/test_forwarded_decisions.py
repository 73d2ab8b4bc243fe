"""Whether a forwarded frame is taken on the local routes, which end a loss between two
nodes resets, and the owner record's compare-and-set: no NATS, no sockets."""

from __future__ import annotations

from collections import Counter

import pytest

from exec_server.rendezvous.cluster.records import NodeRef, StreamOwner, Versioned
from exec_server.rendezvous.cluster.routing import (
    CheckRecords,
    ClaimRefused,
    Direction,
    KnownRoute,
    LocalEnd,
    LocalEnds,
    Refuse,
    RefuseReason,
    check_forwarded,
    end_cut_off,
)
from exec_server.rendezvous.cluster.state import Conflict, LocalClusterState
from exec_server.rendezvous.cluster_router.stream_claim import (
    CLAIM_ATTEMPTS,
    ClaimUnavailable,
    Owned,
    write_stream_claim,
)

A = NodeRef("a", "inc-a")
B = NodeRef("b", "inc-b")
B_OLD = NodeRef("b", "inc-b-old")
C = NodeRef("c", "inc-c")

H2E = Direction.HARNESS_TO_ENVIRONMENT
E2H = Direction.ENVIRONMENT_TO_HARNESS


def ends(
    *,
    environment_here: bool = False,
    environment_node: NodeRef | None = None,
    owner_here: bool = False,
    owner_node: NodeRef | None = None,
) -> LocalEnds:
    return (environment_here, environment_node, owner_here, owner_node)


# --- check_forwarded ------------------------------------------------------------------------


def test_a_harness_frame_from_the_routed_owner_needs_no_records() -> None:
    assert check_forwarded(B, H2E, ends(environment_here=True, owner_node=B)) == KnownRoute()


def test_a_harness_frame_for_an_environment_not_held_here_is_refused_at_once() -> None:
    refused = Refuse(RefuseReason.NOT_ENVIRONMENT_HOLDER)
    assert check_forwarded(B, H2E, ends(owner_node=B)) == refused
    assert check_forwarded(B, H2E, ends(environment_node=C, owner_node=B)) == refused


@pytest.mark.parametrize(
    "owner",
    [
        ends(environment_here=True),  # a stream not routed here (new, or never ours)
        ends(environment_here=True, owner_here=True),  # a local harness owns it
        ends(environment_here=True, owner_node=C),  # another node owns it
        ends(environment_here=True, owner_node=B_OLD),  # the sender's previous life
    ],
)
def test_other_harness_frames_are_checked_against_the_records(owner: LocalEnds) -> None:
    assert check_forwarded(B, H2E, owner) == CheckRecords()


def test_an_environment_frame_from_the_routed_holder_to_a_local_owner_needs_no_records() -> None:
    assert check_forwarded(B, E2H, ends(environment_node=B, owner_here=True)) == KnownRoute()


@pytest.mark.parametrize(
    "local",
    [
        ends(environment_node=C, owner_here=True),  # another holder here
        ends(environment_node=B_OLD, owner_here=True),
        ends(environment_here=True, owner_here=True),  # the environment is here
        ends(environment_node=B),  # no local owner (unknown or orphaned stream)
        ends(environment_node=B, owner_node=C),  # owned elsewhere
    ],
)
def test_other_environment_frames_are_checked_against_the_records(local: LocalEnds) -> None:
    assert check_forwarded(B, E2H, local) == CheckRecords()


# --- end_cut_off ------------------------------------------------------------------------------


def test_a_loss_towards_the_harness_node_resets_the_environment_end() -> None:
    here = ends(environment_here=True, owner_node=B)
    assert end_cut_off(here, owner_remote=True, lost_node_id="b") is LocalEnd.ENVIRONMENT
    assert end_cut_off(here, owner_remote=True, lost_node_id="c") is None
    orphaned = ends(environment_here=True)
    assert end_cut_off(orphaned, owner_remote=True, lost_node_id="c") is LocalEnd.ENVIRONMENT
    local_stream = ends(environment_here=True, owner_here=True)
    assert end_cut_off(local_stream, owner_remote=False, lost_node_id="b") is None


def test_a_loss_towards_the_environment_node_resets_the_harness_end() -> None:
    here = ends(environment_node=B, owner_here=True)
    assert end_cut_off(here, owner_remote=False, lost_node_id="b") is LocalEnd.HARNESS
    assert end_cut_off(here, owner_remote=False, lost_node_id="c") is None
    not_ours = ends(environment_node=B, owner_node=C)
    assert end_cut_off(not_ours, owner_remote=True, lost_node_id="b") is None


# --- write_stream_claim -------------------------------------------------------------------------


def owner(node: NodeRef, socket_id: str, credential: str = "cred") -> StreamOwner:
    return StreamOwner(node.node_id, node.incarnation, socket_id, credential, 0.0)


async def test_the_first_claim_creates_the_record_and_a_repeat_writes_nothing() -> None:
    state = LocalClusterState()
    counts: Counter[str] = Counter()
    mine = owner(A, "h1")
    first = await write_stream_claim(state, "env", "s", mine, is_resume=False, counts=counts)
    assert isinstance(first, Owned) and first.revision is not None
    assert state.stream_owner("env", "s") == Versioned(mine, first.revision)
    again = await write_stream_claim(state, "env", "s", mine, is_resume=False, counts=counts)
    assert again == Owned(None)
    assert counts == Counter(created=1)


async def test_a_resume_of_the_same_credential_takes_the_stream_over() -> None:
    state = LocalClusterState()
    counts: Counter[str] = Counter()
    await state.create_stream("env", "s", owner(A, "h1"))
    newer = owner(B, "h2")
    refused = await write_stream_claim(state, "env", "s", newer, is_resume=False, counts=counts)
    assert refused is ClaimRefused.TAKEOVER_NEEDS_RESUME
    taken = await write_stream_claim(state, "env", "s", newer, is_resume=True, counts=counts)
    assert isinstance(taken, Owned) and taken.revision is not None
    record = state.stream_owner("env", "s")
    assert record is not None and record.value == newer
    stranger = owner(C, "h3", credential="other")
    assert (
        await write_stream_claim(state, "env", "s", stranger, is_resume=True, counts=counts)
        is ClaimRefused.OWNED_BY_ANOTHER_CREDENTIAL
    )
    assert counts == Counter(
        {
            "taken_over": 1,
            ClaimRefused.TAKEOVER_NEEDS_RESUME.value: 1,
            ClaimRefused.OWNED_BY_ANOTHER_CREDENTIAL.value: 1,
        }
    )


class _CacheBehind(LocalClusterState):
    """A node whose watch cache has not seen another node's claim yet: the first read
    after :meth:`lag` finds nothing; the write then meets the real record."""

    behind = False

    def lag(self) -> _CacheBehind:
        self.behind = True
        return self

    def stream_owner(self, environment_id: str, stream_id: str) -> Versioned[StreamOwner] | None:
        if self.behind:
            self.behind = False
            return None
        return super().stream_owner(environment_id, stream_id)


async def test_a_claim_that_loses_the_race_decides_again_on_the_winning_record() -> None:
    state = _CacheBehind()
    await state.create_stream("env", "s", owner(A, "h1"))  # written by "another node"
    counts: Counter[str] = Counter()
    newer = owner(B, "h2")
    assert (
        await write_stream_claim(state.lag(), "env", "s", newer, is_resume=False, counts=counts)
        is ClaimRefused.TAKEOVER_NEEDS_RESUME
    )
    taken = await write_stream_claim(state.lag(), "env", "s", newer, is_resume=True, counts=counts)
    assert isinstance(taken, Owned) and taken.revision is not None
    assert counts["conflict"] == 2 and counts["taken_over"] == 1


class _AlwaysOvertaken(LocalClusterState):
    """Every write finds a newer record than the one it expected."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def create_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner
    ) -> Versioned[StreamOwner]:
        self.writes += 1
        raise Conflict(stream_id, Versioned(owner_of_b(), self.writes))

    async def replace_stream(
        self, environment_id: str, stream_id: str, owner: StreamOwner, expected_revision: int
    ) -> Versioned[StreamOwner]:
        return await self.create_stream(environment_id, stream_id, owner)


def owner_of_b() -> StreamOwner:
    return owner(B, "h-b")


async def test_a_claim_gives_up_after_its_attempts_and_when_the_state_fails() -> None:
    overtaken = _AlwaysOvertaken()
    counts: Counter[str] = Counter()
    outcome = await write_stream_claim(
        overtaken, "env", "s", owner(A, "h1"), is_resume=True, counts=counts
    )
    assert outcome == ClaimUnavailable()
    assert overtaken.writes == CLAIM_ATTEMPTS and counts == Counter(conflict=CLAIM_ATTEMPTS)

    class Broken(LocalClusterState):
        async def create_stream(
            self, environment_id: str, stream_id: str, owner: StreamOwner
        ) -> Versioned[StreamOwner]:
            raise ConnectionError("NATS is gone")

    counts.clear()
    outcome = await write_stream_claim(
        Broken(), "env", "s", owner(A, "h1"), is_resume=False, counts=counts
    )
    assert outcome == ClaimUnavailable() and counts == Counter(failed=1)
