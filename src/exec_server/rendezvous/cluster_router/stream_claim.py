"""Writing a stream's owner record: :func:`write_stream_claim`.

A harness socket's first frame on a stream (or a ``resume`` from a newer socket of the
same credential, on any node) must make the shared record name that socket before the
frame is routed. :func:`~exec_server.rendezvous.cluster.routing.decide_stream_claim`
says what the record calls for (create it, keep it, take it over, or refuse); this
module does the compare-and-set write against
:class:`~exec_server.rendezvous.cluster.state.ClusterState` and, when another node
wrote first (:class:`~exec_server.rendezvous.cluster.state.Conflict`), decides again
against the record that won, up to :data:`CLAIM_ATTEMPTS` times. It knows nothing of
sockets or routes: the router turns the outcome into routing or a reset.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from ..cluster.records import StreamOwner
from ..cluster.routing import (
    ClaimRefused,
    CreateStream,
    KeepStream,
    TakeOverStream,
    decide_stream_claim,
)
from ..cluster.state import ClusterState, Conflict

__all__ = ["CLAIM_ATTEMPTS", "ClaimUnavailable", "Owned", "write_stream_claim"]

log = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 4
"""Decisions (and writes) per claim before giving up with :class:`ClaimUnavailable`."""


@dataclass(frozen=True, slots=True)
class Owned:
    """The record names the claimant. ``revision`` is the record this claim wrote (None
    when the claimant already owned the stream: nothing written)."""

    revision: int | None


@dataclass(frozen=True, slots=True)
class ClaimUnavailable:
    """The record could not be written (the shared state failed, or other nodes kept
    winning the compare-and-set)."""


async def write_stream_claim(
    state: ClusterState,
    environment_id: str,
    stream_id: str,
    claimant: StreamOwner,
    *,
    is_resume: bool,
    counts: Counter[str],
) -> Owned | ClaimRefused | ClaimUnavailable:
    """Make the stream's owner record name ``claimant`` if the claim rules allow.

    ``counts`` gets one count per write outcome: ``created``, ``taken_over``,
    ``conflict``, ``failed``, or the :class:`ClaimRefused` reason.
    """
    existing = state.stream_owner(environment_id, stream_id)
    for _ in range(CLAIM_ATTEMPTS):
        decision = decide_stream_claim(existing, claimant, is_resume=is_resume)
        if isinstance(decision, ClaimRefused):
            counts[decision.value] += 1
            return decision
        if isinstance(decision, KeepStream):
            return Owned(None)
        try:
            if isinstance(decision, CreateStream):
                record = await state.create_stream(environment_id, stream_id, claimant)
                counts["created"] += 1
            else:
                assert isinstance(decision, TakeOverStream)
                record = await state.replace_stream(
                    environment_id, stream_id, claimant, decision.expected_revision
                )
                counts["taken_over"] += 1
        except Conflict as conflict:
            counts["conflict"] += 1
            existing = conflict.current
            continue
        except Exception as exc:
            counts["failed"] += 1
            log.warning("could not record stream %s of %s: %r", stream_id, environment_id, exc)
            return ClaimUnavailable()
        return Owned(record.revision)
    return ClaimUnavailable()
