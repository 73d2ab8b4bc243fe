"""Back-pressure and loss on the router's sockets.

Every socket has an outbound queue drained by its own writer task, so one slow harness
never stalls the environment's reader or the other streams.

* A frame from a *reliable* sender (capability flag set: it retransmits) that does not
  fit the harness socket's queue (``max_queue_bytes`` / ``max_queue_frames``) is dropped
  (``harness_queue_full``); the sender repairs the loss.
* A frame from a *legacy* sender (no flag: a Codex environment, or ours answering a Codex
  harness) is never dropped. It is queued, counted against its stream; once the stream
  holds ``stream_pause_bytes`` (or the socket ``max_queue_bytes``), an environment that
  negotiated the control subprotocol is told to pause that stream's output (per stream:
  its other streams keep flowing) and to resume it once the harness drained half of it.
  A stream whose harness stays too slow (queued bytes over ``max_stream_buffer_bytes``,
  the socket over ``max_socket_buffer_bytes``, or paused for ``slow_harness_timeout_s``)
  is ended explicitly: the harness gets every frame queued before the cut, then
  ``reset{harness_too_slow}``, and the environment gets the same reset. Never a gap.
* A full *environment* queue makes the harness readers wait (TCP back-pressure to the
  harnesses), since nothing else depends on that reader.

An empty queue accepts any frame, so one frame larger than a bound (legacy peers send up
to 64 MiB) still passes. Memory per harness socket is bounded by
``max_socket_buffer_bytes`` plus one frame.
"""

from __future__ import annotations

import logging

from ..relay.control import PauseOutput, ResumeOutput
from .router_config import DropReason, ResetReason
from .router_state import RouterState
from .socket_peer import SocketPeer, _EnvironmentRoute, _StreamRoute

__all__ = ["Backpressure"]

log = logging.getLogger(__name__)


class Backpressure(RouterState):
    """Queues frames for slow harnesses within bounds; pauses, resumes and cuts legacy
    streams (see the module docstring)."""

    def _harness_queue_full(self, owner: SocketPeer) -> None:
        self.stats.dropped[DropReason.HARNESS_QUEUE_FULL] += 1
        if not owner.overflow_logged:
            owner.overflow_logged = True
            log.warning(
                "%s is not reading fast enough: its outbound queue is full "
                "(%d frames, %d bytes); dropping reliable frames for it (they are resent)",
                owner.label,
                owner.queued_frames,
                owner.queued_bytes,
            )

    def _enqueue_legacy(
        self, route: _EnvironmentRoute, stream: _StreamRoute, owner: SocketPeer, data: bytes
    ) -> bool:
        """Queue a frame that cannot be resent: never dropped, bounded per stream and per
        socket; False when the stream was cut instead (the frame goes nowhere, and both
        ends get ``reset{harness_too_slow}``)."""
        cfg = self.config
        size = len(data)
        if (stream.queued_bytes and stream.queued_bytes + size > cfg.max_stream_buffer_bytes) or (
            owner.queued_bytes and owner.queued_bytes + size > cfg.max_socket_buffer_bytes
        ):
            self.stats.dropped[DropReason.HARNESS_TOO_SLOW] += 1
            self._cut_slow_stream(
                route,
                stream,
                f"{stream.queued_bytes} bytes queued for the stream, "
                f"{owner.queued_bytes} for the socket",
            )
            return False
        owner.force_enqueue(data, stream)
        if not stream.paused and (
            stream.queued_bytes >= cfg.stream_pause_bytes
            or owner.queued_bytes >= cfg.max_queue_bytes
        ):
            self._pause(route, stream, owner)
        return True

    def _pause(self, route: _EnvironmentRoute, stream: _StreamRoute, owner: SocketPeer) -> None:
        stream.paused = True
        owner.paused.add(stream)
        self.stats.pauses += 1
        self._pause_output(route, stream)
        stream.stall_timer = self._loop.call_later(
            self.config.slow_harness_timeout_s, self._stall_expired, route, stream
        )

    def _unpause(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if not stream.paused:
            return
        stream.paused = False
        if stream.owner is not None:
            stream.owner.paused.discard(stream)
        if stream.stall_timer is not None:
            stream.stall_timer.cancel()
            stream.stall_timer = None
        if not stream.ended:
            self._resume_output(route, stream)

    def _pause_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        """Ask the environment to pause one stream's output."""
        if route.socket is not None:
            route.socket.send_control(PauseOutput(stream.stream_id))

    def _resume_output(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        if route.socket is not None:
            route.socket.send_control(ResumeOutput(stream.stream_id))

    def _on_sent(self, peer: SocketPeer, stream: _StreamRoute, size: int) -> None:
        """A legacy frame of ``stream`` (``size`` bytes, no longer counted in its queued
        bytes) was written to ``peer``: resume paused streams
        once both the stream and the socket drained to half their pause thresholds."""
        paused = peer.paused
        if not paused:
            return
        cfg = self.config
        if peer.queued_bytes > cfg.max_queue_bytes // 2:
            return
        route = self._routes.get(peer.environment_id)
        if route is None:
            return
        if peer.queued_bytes + size > cfg.max_queue_bytes // 2:  # the socket just got there
            candidates = list(paused)
        elif stream in paused:
            candidates = [stream]
        else:
            return
        for candidate in candidates:
            if candidate.queued_bytes <= cfg.stream_pause_bytes // 2:
                self._unpause(route, candidate)

    def _stall_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.stall_timer = None
        if stream.paused and route.streams.get(stream.stream_id) is stream:
            self._cut_slow_stream(
                route,
                stream,
                f"paused for {self.config.slow_harness_timeout_s:g}s without catching up",
            )

    def _cut_slow_stream(self, route: _EnvironmentRoute, stream: _StreamRoute, why: str) -> None:
        owner = stream.owner
        log.warning(
            "%s is too slow for stream %s (%s); resetting the stream (harness_too_slow)",
            owner.label if owner is not None else "a harness",
            stream.stream_id,
            why,
        )
        self._end_stream(route, stream)
        if route.socket is not None:
            self._send_reset(route.socket, stream, ResetReason.HARNESS_TOO_SLOW)
        if owner is not None:
            # After every frame already queued for it: the harness sees all it was sent,
            # then the reset, never a gap.
            self._send_reset(owner, stream, ResetReason.HARNESS_TOO_SLOW)
        self._maybe_forget(route)
