"""Who may open a stream: the decision a :class:`~exec_server.relay.stream_mux.StreamMux`
takes for a frame whose ``stream_id`` it does not route.

A pure function of the frame and the mux's state (its role, its limits, the ids it has
retired and how many streams it holds); the mux applies the answer (count the drop,
queue the reply reset, or create the stream). The rules, in the order they are checked:

* Only a **data** frame opens a stream, as in Codex (E1 ``run_multiplexed_executor``), and
  so does a ``resume`` carrying the reliable capability flag (our harness's stream claim;
  see :mod:`~exec_server.relay.reliable_stream`), so a harness whose first data frames were
  lost still gets an answer. Codex's unflagged ``resume{0}`` claim and any
  ``ack_frame``/``heartbeat``/``reset``/``handshake`` for an unknown id are ignored and
  counted (``unknown_stream_control``).
* Ended stream ids are remembered by the mux: a later *legacy* data frame on such an id
  starts a **new** stream, as in Codex; a *reliable* data or resume frame belongs to the
  old stream (a stale retransmission), so it is dropped (``retired_stream``) and answered
  with ``reset{stream_closed}`` (stream ids are single-use between our endpoints, as in
  later Codex).
* A reliable frame (data or resume) for an unknown id that acknowledges data
  (``ack != 0``) comes from a peer that had the stream with an earlier incarnation of
  this side (a restarted environment): it is answered with ``reset{unknown_stream}``
  rather than accepted as a new stream whose seqs could never line up.
* The harness side only knows the streams it opened (``unknown_stream``).
* More than ``max_streams`` streams: the creating frame is dropped (``too_many_streams``)
  and answered with ``reset{too_many_streams}`` so the peer fails fast instead of waiting.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from exec_server.relay.frame_codec import RELIABLE_CAPABILITY_BIT, DataBody, RelayFrame, ResumeBody
from exec_server.relay.mux_config import MuxConfig, MuxDropReason, MuxRole
from exec_server.relay.stream_config import seq_to_wire

__all__ = ["Refusal", "admit"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The frame does not open a stream: count it under ``drop``; with ``reset``, answer
    the peer with ``reset{reset}``, flagged as reliable when ``reliable``."""

    drop: MuxDropReason
    reset: str | None = None
    reliable: bool = False


def admit(
    frame: RelayFrame,
    role: MuxRole,
    config: MuxConfig,
    retired: Container[str],
    stream_count: int,
) -> Refusal | None:
    """``None`` when ``frame`` opens a new stream, else why not (see :class:`Refusal`).

    ``retired`` holds the ids of ended streams; ``stream_count`` counts the streams the
    mux holds, live or still closing.
    """
    body = frame.body
    reliable = bool(frame.ack_bits & RELIABLE_CAPABILITY_BIT) and config.stream.allow_reliable
    if not isinstance(body, DataBody) and not (isinstance(body, ResumeBody) and reliable):
        return Refusal(MuxDropReason.UNKNOWN_STREAM_CONTROL)
    if reliable and frame.stream_id in retired:
        return Refusal(MuxDropReason.RETIRED_STREAM, "stream_closed", reliable)
    if (
        reliable
        and role is MuxRole.ENVIRONMENT
        and frame.ack != seq_to_wire(config.stream.initial_seq - 1)  # 0 in production
    ):
        return Refusal(MuxDropReason.LOST_STREAM, "unknown_stream", reliable)
    if role is MuxRole.HARNESS:
        return Refusal(MuxDropReason.UNKNOWN_STREAM)
    if stream_count >= config.max_streams:
        return Refusal(MuxDropReason.TOO_MANY_STREAMS, "too_many_streams", reliable)
    return None
