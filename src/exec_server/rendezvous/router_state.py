"""The router's state (routes, sockets, timers) and the steps every rule shares: ending
a stream, grace periods, sending resets, forgetting idle routes."""

from __future__ import annotations

import asyncio
import logging

from ..relay.control import PeerOffline
from ..relay.frame_codec import reset_for_peer
from .router_config import ResetReason, RouterConfig, RouterStats
from .socket_peer import SocketPeer, _EnvironmentRoute, _StreamRoute

__all__ = ["RouterState"]

log = logging.getLogger(__name__)


class RouterState:
    """Routing state for every environment id, and the steps the rules share."""

    def __init__(self, config: RouterConfig | None = None) -> None:
        self.config = config or RouterConfig()
        self.stats = RouterStats()
        # The routed frame's path reads these without attribute chains.
        self._frame_limits = self.config.frame_limits
        self._frames_to_harness = self.stats.frames_routed
        self._bytes_to_harness = self.stats.bytes_routed
        self._routes: dict[str, _EnvironmentRoute] = {}
        self._peers: set[SocketPeer] = set()
        self._serial = 0
        self._loop = asyncio.get_running_loop()
        self._startup_grace_until = self._loop.time() + self.config.environment_grace_s

    # --- queries ---------------------------------------------------------------------

    @property
    def peers(self) -> frozenset[SocketPeer]:
        return frozenset(self._peers)

    def is_online(self, environment_id: str) -> bool:
        route = self._routes.get(environment_id)
        return route is not None and route.socket is not None

    def stream_count(self, environment_id: str | None = None) -> int:
        if environment_id is None:
            return sum(len(route.streams) for route in self._routes.values())
        route = self._routes.get(environment_id)
        return len(route.streams) if route else 0

    def online_environments(self) -> int:
        return sum(1 for route in self._routes.values() if route.socket is not None)

    def route_count(self) -> int:
        """Environment ids with any routing state (sockets, streams or a grace timer)."""
        return len(self._routes)

    def _route(self, environment_id: str) -> _EnvironmentRoute:
        route = self._routes.get(environment_id)
        if route is None:
            route = self._routes[environment_id] = _EnvironmentRoute(environment_id)
            remaining = self._startup_grace_until - self._loop.time()
            if remaining > 0:
                self._start_grace(route, remaining)
            self._route_created(route)
        return route

    def _route_created(self, route: _EnvironmentRoute) -> None:
        """Hook: a route was just created (the cluster router looks up its holder)."""

    @staticmethod
    def _cancel_stream_timers(stream: _StreamRoute) -> None:
        for timer in (stream.orphan_timer, stream.stall_timer):
            if timer is not None:
                timer.cancel()
        stream.orphan_timer = stream.stall_timer = None

    def _end_stream(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.ended = True
        if route.streams.get(stream.stream_id) is stream:
            del route.streams[stream.stream_id]
        if stream.owner is not None:
            stream.owner.owned.discard(stream.stream_id)
            stream.owner.paused.discard(stream)
        stream.paused = False
        self._cancel_stream_timers(stream)

    def _orphan_expired(self, route: _EnvironmentRoute, stream: _StreamRoute) -> None:
        stream.orphan_timer = None
        if stream.owner is not None or route.streams.get(stream.stream_id) is not stream:
            return
        self._end_stream(route, stream)
        if route.socket is not None:
            self._send_reset(route.socket, stream, ResetReason.HARNESS_OFFLINE)
        self._maybe_forget(route)

    def _start_grace(self, route: _EnvironmentRoute, grace_s: float) -> None:
        deadline = self._loop.time() + grace_s
        if route.grace_timer is not None:
            if route.grace_deadline >= deadline:
                return
            route.grace_timer.cancel()
        route.grace_deadline = deadline
        route.grace_timer = self._loop.call_at(deadline, self._grace_expired, route)

    def _cancel_grace(self, route: _EnvironmentRoute) -> None:
        if route.grace_timer is not None:
            route.grace_timer.cancel()
            route.grace_timer = None

    def _tell_offline(self, route: _EnvironmentRoute) -> None:
        """Tell the harness sockets that negotiated control messages that the
        environment is offline and how long it is waited for."""
        remaining = max(0.0, route.grace_deadline - self._loop.time())
        for harness in route.harnesses:
            if harness.control:
                route.offline_told = True
                harness.send_control(PeerOffline("environment", remaining))

    def _grace_expired(self, route: _EnvironmentRoute) -> None:
        route.grace_timer = None
        if route.socket is not None:
            return
        streams = list(route.streams.values())
        if streams:
            log.info(
                "environment %s did not come back; resetting its %d streams",
                route.environment_id,
                len(streams),
            )
        for stream in streams:
            self._end_stream(route, stream)
            if stream.owner is not None:
                self._send_reset(stream.owner, stream, ResetReason.ENVIRONMENT_OFFLINE)
        self._maybe_forget(route)

    def _send_reset(self, peer: SocketPeer, stream: _StreamRoute, reason: ResetReason) -> None:
        frame = reset_for_peer(stream.stream_id, reason.value, reliable=stream.reliable)
        if peer.force_enqueue(frame):
            self.stats.resets_sent[reason.value] += 1

    def _reply_reset(
        self, peer: SocketPeer, stream_id: str, reason: ResetReason, reliable: bool
    ) -> None:
        """A reset answering a refused frame: bounded by the offender's own queue."""
        if peer.try_enqueue(reset_for_peer(stream_id, reason.value, reliable=reliable)):
            self.stats.resets_sent[reason.value] += 1

    def _maybe_forget(self, route: _EnvironmentRoute) -> None:
        if (
            route.socket is None
            and not route.streams
            and not route.harnesses
            and route.grace_timer is None
            and self._routes.get(route.environment_id) is route
        ):
            del self._routes[route.environment_id]
