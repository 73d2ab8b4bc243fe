"""Sans-IO credit flow control and loss detection for frames forwarded between two nodes.

Core NATS delivers at most once: a subscriber that falls behind has messages dropped
(the server cuts a connection whose outbound buffer overflows), and messages in flight
during a reconnect are gone. Nothing pushes back on a publisher either: a publish is
written to the socket (or a reconnect buffer) whatever the receiver does. So the frame
bus brings its own end-to-end flow control, per *channel* (one sending node, one
receiving node, one environment id):

* **Credit.** The sender may have at most ``window`` bytes unacknowledged (a frame
  larger than the window passes when nothing is in flight). The receiver counts bytes
  *consumed* (handed to the local socket's queue, which has its own bounds) and sends a
  cumulative grant whenever a quarter window has accumulated, or at once when the
  sender asked with a sync. Grants are cumulative, so a lost grant is repaired by the
  next one.
* **Order and loss.** Frames carry ``(generation, seq)``; the receiver expects ``seq``
  to grow by one. A gap means frames were lost: the channel is *broken* both ways (the
  router decides what that means per stream: a reliable stream retransmits, a legacy
  stream is reset, never silently truncated), the receiver answers with a reset and the
  sender starts a new generation.
* **Sync.** A sync carries the last ``seq`` the sender sent. The sender sends one when
  it runs out of credit, after a reconnect, and periodically while bytes stay
  unacknowledged, so a lost tail of frames (or a lost grant) is detected or repaired.

Nothing here reads a clock or touches NATS; :mod:`~exec_server.rendezvous.cluster.
nats_bus` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "DEFAULT_WINDOW_BYTES",
    "Arrival",
    "ReceiveChannel",
    "SendChannel",
]

DEFAULT_WINDOW_BYTES = 4 * 1024 * 1024
"""Unacknowledged bytes per channel: far above the loopback bandwidth-delay product,
small enough that a stalled peer pins little memory."""


class Arrival(Enum):
    ACCEPT = "accept"
    """In order: deliver it."""
    GAP = "gap"
    """Frames before it were lost: the channel is broken."""
    STALE = "stale"
    """From a generation the receiver already reset: drop it silently."""


@dataclass(slots=True)
class SendChannel:
    """The sending end of one channel."""

    window: int = DEFAULT_WINDOW_BYTES
    generation: int = 1
    next_seq: int = 1
    sent: int = 0
    """Bytes sent in this generation (cumulative)."""
    acked: int = 0
    """Bytes the receiver reported consumed in this generation (cumulative)."""
    sync_pending: bool = False
    """A sync was sent and no grant has answered it yet."""
    acked_at_last_probe: int = -1

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked

    def has_room(self) -> bool:
        """Below the window (what ``wait_for_room`` waits for)."""
        return self.sent - self.acked < self.window

    def can_take(self, size: int) -> bool:
        """Whether a frame of ``size`` fits (any frame fits an empty window)."""
        in_flight = self.sent - self.acked
        return in_flight == 0 or in_flight + size <= self.window

    def take(self, size: int) -> int:
        """Account one frame of ``size`` bytes; its ``seq``."""
        seq = self.next_seq
        self.next_seq += 1
        self.sent += size
        return seq

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def on_grant(self, generation: int, consumed: int) -> bool:
        """A grant arrived; True if it freed credit."""
        if generation != self.generation or consumed <= self.acked:
            return False
        self.acked = min(consumed, self.sent)
        self.sync_pending = False
        return True

    def needs_probe(self) -> bool:
        """Periodic check: unacknowledged bytes with no progress since the last check."""
        stalled = self.in_flight > 0 and self.acked == self.acked_at_last_probe
        self.acked_at_last_probe = self.acked
        return stalled

    def reset(self, at_least: int = 0) -> None:
        """Start a new generation (after the receiver reported a gap)."""
        self.generation = max(self.generation, at_least) + 1
        self.next_seq = 1
        self.sent = 0
        self.acked = 0
        self.sync_pending = False
        self.acked_at_last_probe = -1


@dataclass(slots=True)
class ReceiveChannel:
    """The receiving end of one channel (one sender incarnation)."""

    window: int = DEFAULT_WINDOW_BYTES
    generation: int = 0
    """The sender generation being received; 0 before the first frame."""
    min_generation: int = 1
    """Generations below this were reset: their frames are stale."""
    expected_seq: int = 1
    consumed: int = 0
    granted: int = 0
    grant_requested: bool = False
    queued_bytes: int = field(default=0)
    """Arrived but not yet consumed (bounded by the sender's window)."""

    def on_frame(self, generation: int, seq: int) -> Arrival:
        verdict = self._check(generation, seq)
        if verdict is Arrival.ACCEPT:
            self.expected_seq = seq + 1
        return verdict

    def on_sync(self, generation: int, last_seq: int) -> Arrival:
        """A sync; on ACCEPT the caller grants as soon as the queue is consumed."""
        if generation < self.min_generation or generation < self.generation:
            return Arrival.STALE
        if generation > self.generation:
            if last_seq == 0:  # a new generation with nothing sent yet
                self._start(generation)
                self.grant_requested = True
                return Arrival.ACCEPT
            return Arrival.GAP
        if last_seq != self.expected_seq - 1:
            return Arrival.GAP
        self.grant_requested = True
        return Arrival.ACCEPT

    def _check(self, generation: int, seq: int) -> Arrival:
        if generation < self.min_generation or generation < self.generation:
            return Arrival.STALE
        if generation > self.generation:
            if seq != 1:
                return Arrival.GAP
            self._start(generation)
            return Arrival.ACCEPT
        if seq < self.expected_seq:
            return Arrival.STALE
        return Arrival.ACCEPT if seq == self.expected_seq else Arrival.GAP

    def _start(self, generation: int) -> None:
        self.generation = generation
        self.expected_seq = 1
        self.consumed = 0
        self.granted = 0
        self.queued_bytes = 0

    def broken(self) -> int:
        """A gap was seen: drop this generation; returns the generation to reset."""
        reset = max(self.generation, self.min_generation)
        self.min_generation = reset + 1
        self.generation = 0
        self.expected_seq = 1
        self.consumed = 0
        self.granted = 0
        self.grant_requested = False
        self.queued_bytes = 0
        return reset

    def on_consumed(self, size: int, *, queue_empty: bool) -> int | None:
        """``size`` bytes were handed on; the cumulative grant to send now, if any."""
        self.consumed += size
        self.queued_bytes -= size
        return self.grant_due(queue_empty=queue_empty)

    def grant_due(self, *, queue_empty: bool) -> int | None:
        ungranted = self.consumed - self.granted
        if ungranted >= self.window // 4 or (self.grant_requested and queue_empty):
            self.granted = self.consumed
            self.grant_requested = False
            return self.consumed
        return None
