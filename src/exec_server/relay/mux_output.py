"""How one writer pass of a :class:`~exec_server.relay.stream_mux.StreamMux` collects frames.

The mux decides which streams may have output and in what order they take their turn
(:func:`streams_in_turn`, from its routing table, its pending and paused sets and its cached
deadlines); an :class:`OutputBatch` then pulls frames from those streams within the pass's
byte budget: one frame per stream per round (:meth:`OutputBatch.round`), or every frame of
the last stream with output in a row (:meth:`OutputBatch.drain`). A data frame carrying a
whole ``message_with_headroom`` message is framed in place
(``ReliableStream.next_frame_in_place``, ``encode_frame_for_socket``) when the writer takes
views. The mux keeps the fast paths that skip a pass (``has_output_now``, ``try_send_now``)
and refreshes the streams a pass touched.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from exec_server.relay.frame_codec import RelayFrame, encode_frame, encode_frame_after
from exec_server.relay.frame_encoder import encode_frame_for_socket
from exec_server.relay.mux_config import MuxStream
from exec_server.relay.reliable_stream import ReliableStream

__all__ = ["OutputBatch", "streams_in_turn"]


def streams_in_turn(
    streams: list[MuxStream],
    start: int,
    pending: Collection[MuxStream],
    timers: Mapping[MuxStream, float],
    paused: Collection[MuxStream],
    now: float,
) -> list[MuxStream]:
    """The streams that may have output at ``now`` (marked pending or with a deadline
    due; a paused stream only once closed, for its reset), starting from ``streams[start]``."""
    if start:
        streams = streams[start:] + streams[:start]
    active = [s for s in streams if s in pending or timers.get(s, now + 1.0) <= now]
    if paused:
        active = [s for s in active if s not in paused or s.is_closed]
    return active


class OutputBatch:
    """Frames collected by one writer pass (``StreamMux.data_to_send``/``data_to_write``),
    within its budget. A stream found to have nothing more to write is taken out of
    ``pending`` (the mux's set of streams that may have output)."""

    __slots__ = (
        "budget",
        "framed",
        "frames",
        "headroom",
        "in_place",
        "pending",
        "total",
        "touched",
    )

    def __init__(
        self, max_bytes: int | None, headroom: int, in_place: bool, pending: set[MuxStream]
    ) -> None:
        self.budget = math.inf if max_bytes is None else max_bytes
        self.headroom = headroom
        self.in_place = in_place
        self.pending = pending
        self.frames: list[bytes | bytearray | memoryview] = []
        self.total = 0
        self.touched: set[MuxStream] = set()
        self.framed: set[int] = set()  # messages framed in place (encode_frame_for_socket)

    def encode(self, frame: RelayFrame) -> bytes | bytearray | memoryview:
        headroom = self.headroom
        if self.in_place:
            return encode_frame_for_socket(frame, headroom, self.framed)
        return encode_frame_after(frame, headroom) if headroom else encode_frame(frame)

    def has_room(self) -> bool:
        return self.total < self.budget

    def add(self, frame: bytes | bytearray | memoryview) -> bool:
        """Collect one frame; whether there is room for more."""
        self.frames.append(frame)
        self.total += len(frame)
        return self.total < self.budget

    def drain(self, stream: MuxStream, now: float) -> None:
        """Every frame ``stream`` has, within the budget. New data carrying whole
        ``message_with_headroom`` messages is framed in place without a ``RelayFrame``
        (``ReliableStream.next_frame_in_place``: the same bytes)."""
        in_place = self.in_place and type(stream) is ReliableStream
        while True:
            if in_place:
                view = stream.next_frame_in_place(now)  # type: ignore[attr-defined]
                if view is not None:
                    self.framed.add(id(view.obj))
                    self.touched.add(stream)
                    if not self.add(view):
                        return
                    continue
            frame = stream.next_frame(now)
            if frame is None:
                break
            self.touched.add(stream)
            if not self.add(self.encode(frame)):
                return
        self.pending.discard(stream)

    def round(self, active: list[MuxStream], now: float) -> list[MuxStream]:
        """One frame of each stream in turn; returns the streams that had one."""
        still_active = []
        for stream in active:
            frame = stream.next_frame(now)
            if frame is None:
                self.pending.discard(stream)
                continue
            self.touched.add(stream)
            still_active.append(stream)
            if not self.add(self.encode(frame)):
                break
        return still_active
