"""One outbound segment and the clock that times its retransmission.

:class:`Segment` is a message's slice with its seq and transmission state (when it was
last sent, how often, whether it is selectively acknowledged, marked for resend or fast
retransmitted); :class:`RttEstimator` keeps SRTT/RTTVAR and the retransmission timeout
(RFC 6298, Karn's rule, exponential backoff) and the shorter repair timeout of a fast
retransmission. :class:`~exec_server.relay.send_window.SendWindow` holds the segments and
owns the estimator; :data:`PayloadTransform` is the per-segment seal/unseal seam both
windows take. Nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exec_server.relay.frame_encoder import OutboundPayload
from exec_server.relay.stream_config import (
    CLOCK_GRANULARITY_S,
    REPAIR_RESEND_MIN_S,
    ReliableStreamConfig,
)

__all__ = ["PayloadTransform", "RttEstimator", "Segment"]

PayloadTransform = Callable[[bytes, int, int], bytes]
"""A per-segment payload transform (encryption on the send side, decryption on the
receive side): ``(payload, segment_index, segment_count) -> payload``, called once per
segment in seq order."""


@dataclass(slots=True)
class Segment:
    """One outbound segment (the payload already transformed) and its transmission state."""

    seq: int
    wire_seq: int
    payload: OutboundPayload
    index: int
    count: int
    traceparent: str | None
    tracestate: str | None
    sent_at: float | None = None
    transmissions: int = 0
    sacked: bool = False
    resend: bool = False
    fast_retransmitted: bool = False

    @property
    def is_repair(self) -> bool:
        """A first fast retransmission: it gets the short repair timer, later ones the RTO."""
        return self.fast_retransmitted and self.transmissions == 2


class RttEstimator:
    """SRTT/RTTVAR and the retransmission timeout (RFC 6298), with exponential backoff.

    ``rto_s`` and ``repair_s`` are cached and recomputed after every change."""

    __slots__ = ("_config", "backoff", "repair_s", "rto_s", "rttvar", "srtt")

    def __init__(self, config: ReliableStreamConfig) -> None:
        self._config = config
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 0
        self.rto_s = self.repair_s = 0.0
        self._update()

    def _update(self) -> None:
        cfg = self._config
        srtt = self.srtt
        base = (
            cfg.initial_rto_s if srtt is None else srtt + max(CLOCK_GRANULARITY_S, 4 * self.rttvar)
        )
        base = min(max(base, cfg.min_rto_s), cfg.max_rto_s)
        self.rto_s = rto = float(min(base * (1 << self.backoff), cfg.max_rto_s))
        # How long a fast retransmission may go unacknowledged before it is sent again:
        # twice the smoothed RTT (at least REPAIR_RESEND_MIN_S), capped by the RTO. The
        # receiver acks a segment that fills a gap at once and has usually SACKed every
        # later one already, so waiting the full RTO would only idle the window.
        smoothed = cfg.initial_rto_s if srtt is None else srtt
        self.repair_s = min(rto, max(REPAIR_RESEND_MIN_S, 2 * smoothed))

    def sample(self, rtt: float) -> None:
        """A valid RTT sample (Karn: from a segment sent once); clears the backoff."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.backoff = 0
        self._update()

    def reset_backoff(self) -> None:
        if self.backoff:
            self.backoff = 0
            self._update()

    def back_off(self) -> None:
        """Double the RTO (up to ``max_rto_s``)."""
        if self.rto_s < self._config.max_rto_s:
            self.backoff += 1
            self._update()
