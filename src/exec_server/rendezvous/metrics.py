"""Prometheus exposition of the rendezvous's counters (``GET /metrics``).

The hot path only bumps plain ``Counter`` dicts (:class:`~.router.RouterStats`,
:class:`RegistryStats`); :class:`RendezvousCollector` turns them into metric families
when scraped, so routing a frame never takes a lock. Each server has its own
``CollectorRegistry``, so several servers in one process (tests, embedding) never clash.

Families (labels never carry ids, names, hosts or URLs):

=================================================== ======= ==============================
name                                                type    labels
=================================================== ======= ==============================
``exec_server_rendezvous_sockets``                  gauge   ``role``: open relay sockets
``exec_server_rendezvous_sockets_accepted_total``   counter ``role``
``exec_server_rendezvous_environments_online``      gauge   environments with a socket
``exec_server_rendezvous_streams``                  gauge   routed streams
``exec_server_rendezvous_queued_bytes``             gauge   ``role``: outbound queue bytes
``exec_server_rendezvous_frames_routed_total``      counter ``direction``
``exec_server_rendezvous_bytes_routed_total``       counter ``direction``
``exec_server_rendezvous_frames_dropped_total``     counter ``reason``
``exec_server_rendezvous_resets_sent_total``        counter ``reason``
``exec_server_rendezvous_protocol_errors_total``    counter ``reason``: sockets closed for it
``exec_server_rendezvous_stream_reclaims_total``    counter
``exec_server_rendezvous_stream_pauses_total``      counter legacy streams paused (slow harness)
``exec_server_rendezvous_registrations_total``      counter ``result``
``exec_server_rendezvous_harness_urls_total``       counter ``result``: ``/connect`` calls
``exec_server_rendezvous_websocket_upgrades_total`` counter ``result``: ``accepted`` or why not
``exec_server_rendezvous_harness_key_validations_total`` counter ``result``: ``valid`` or why not
=================================================== ======= ==============================

A node of a rendezvous cluster (:class:`~exec_server.rendezvous.cluster_router.
ClusterRouter`) also exports:

=================================================== ======= ==============================
name                                                type    labels
=================================================== ======= ==============================
``exec_server_rendezvous_cluster_ready``            gauge   1 when this node can serve
``exec_server_rendezvous_cluster_nodes_live``       gauge   nodes holding a lease
``exec_server_rendezvous_cluster_frames_refused_total`` counter ``reason``: from other nodes
``exec_server_rendezvous_cluster_stream_claims_total`` counter ``result``: record writes
``exec_server_rendezvous_cluster_lookups_total``    counter inbound frames checked against
                                                            the authoritative records
``exec_server_rendezvous_cluster_channels_lost_total`` counter frame losses between nodes
``exec_server_rendezvous_cluster_lease_losses_total`` counter
``exec_server_rendezvous_cluster_bus_frames_total`` counter ``direction``: sent, received
``exec_server_rendezvous_cluster_bus_bytes_total``  counter ``direction``: sent, received
=================================================== ======= ==============================

Every known label value is exported from the start (at 0), so rates work from the
first scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..relay.errors import InvalidFrameReason
from .cluster.routing import ClaimRefused, RefuseReason
from .cluster_router import ClusterRouter
from .errors import UrlRejectReason
from .noise_registry import RefusalReason
from .router import Direction, DropReason, ProtocolErrorReason, ResetReason, Router
from .url_signing import UrlRole

__all__ = [
    "METRIC_PREFIX",
    "RegistryStats",
    "RendezvousCollector",
    "make_registry",
    "render",
]

METRIC_PREFIX = "exec_server_rendezvous_"

_REGISTRY_RESULTS = (
    "ok",
    "unauthorized",
    "invalid_environment_id",
    "invalid_executor_id",
    "invalid_request",
    "unsupported_security_profile",
)


@dataclass
class RegistryStats:
    """Counters of the HTTP side."""

    registrations: Counter[str] = field(default_factory=Counter)
    harness_urls: Counter[str] = field(default_factory=Counter)
    upgrades: Counter[str] = field(default_factory=Counter)
    harness_key_validations: Counter[str] = field(default_factory=Counter)


class RendezvousCollector(Collector):
    """Reads :class:`Router` and :class:`RegistryStats` at scrape time."""

    def __init__(self, router: Router, registry_stats: RegistryStats) -> None:
        self._router = router
        self._registry = registry_stats

    def collect(self) -> Iterable[Metric]:
        router = self._router
        stats = router.stats
        peers = router.peers
        roles = [role.value for role in UrlRole]

        sockets = GaugeMetricFamily(
            METRIC_PREFIX + "sockets", "Open relay websockets.", labels=["role"]
        )
        queued = GaugeMetricFamily(
            METRIC_PREFIX + "queued_bytes",
            "Bytes waiting in relay sockets' outbound queues.",
            labels=["role"],
        )
        for role in roles:
            sockets.add_metric([role], sum(1 for p in peers if p.role.value == role))
            queued.add_metric([role], sum(p.queued_bytes for p in peers if p.role.value == role))
        yield sockets
        yield queued
        yield _counter(
            "sockets_accepted",
            "Relay websockets admitted since start.",
            "role",
            stats.sockets_accepted,
            roles,
        )
        yield GaugeMetricFamily(
            METRIC_PREFIX + "environments_online",
            "Environments with a live relay socket.",
            value=router.online_environments(),
        )
        yield GaugeMetricFamily(
            METRIC_PREFIX + "streams", "Relay streams being routed.", value=router.stream_count()
        )
        directions = [d.value for d in Direction]
        yield _counter(
            "frames_routed",
            "Relay frames forwarded.",
            "direction",
            stats.frames_routed,
            directions,
        )
        yield _counter(
            "bytes_routed",
            "Relay frame bytes forwarded.",
            "direction",
            stats.bytes_routed,
            directions,
        )
        yield _counter(
            "frames_dropped",
            "Relay frames not forwarded, by reason.",
            "reason",
            stats.dropped,
            [r.value for r in DropReason],
        )
        yield _counter(
            "protocol_errors",
            "Relay sockets closed for breaking the protocol, by reason.",
            "reason",
            stats.protocol_errors,
            [r.value for r in ProtocolErrorReason]
            + [r.value for r in InvalidFrameReason if r is not InvalidFrameReason.OVERSIZE],
        )
        yield _counter(
            "resets_sent",
            "Reset frames generated by the rendezvous, by reason.",
            "reason",
            stats.resets_sent,
            [r.value for r in ResetReason],
        )
        reclaims = CounterMetricFamily(
            METRIC_PREFIX + "stream_reclaims",
            "Streams taken over by a newer socket with the owner's URL nonce.",
        )
        reclaims.add_metric([], stats.reclaims)
        yield reclaims
        pauses = CounterMetricFamily(
            METRIC_PREFIX + "stream_pauses",
            "Legacy streams whose environment was asked to pause for a slow harness.",
        )
        pauses.add_metric([], stats.pauses)
        yield pauses
        yield _counter(
            "registrations",
            "Environment registrations, by result.",
            "result",
            self._registry.registrations,
            _REGISTRY_RESULTS,
        )
        yield _counter(
            "harness_urls",
            "Harness URL requests (/connect), by result.",
            "result",
            self._registry.harness_urls,
            _REGISTRY_RESULTS,
        )
        yield _counter(
            "websocket_upgrades",
            "Relay websocket upgrade attempts, by result.",
            "result",
            self._registry.upgrades,
            ["accepted", *(r.value for r in UrlRejectReason)],
        )
        yield _counter(
            "harness_key_validations",
            "Noise harness key validations (/validate), by result.",
            "result",
            self._registry.harness_key_validations,
            ["valid", *(r.value for r in RefusalReason)],
        )


def _counter(
    name: str, documentation: str, label: str, values: Counter[str], known: Iterable[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(METRIC_PREFIX + name, documentation, labels=[label])
    for key in _merged(known, values):
        family.add_metric([key], values.get(key, 0))
    return family


def _merged(known: Iterable[str], values: Counter[str]) -> Iterator[str]:
    seen = list(dict.fromkeys(known))
    yield from seen
    yield from sorted(set(values) - set(seen))


class ClusterCollector(Collector):
    """Reads a cluster node's router, state and frame bus at scrape time."""

    def __init__(self, router: ClusterRouter) -> None:
        self._router = router

    def collect(self) -> Iterable[Metric]:
        router = self._router
        stats = router.cluster_stats
        state = router.state
        yield GaugeMetricFamily(
            METRIC_PREFIX + "cluster_ready",
            "1 when this node can serve (connected to NATS, holding its lease).",
            value=1 if state.readiness().ready else 0,
        )
        yield GaugeMetricFamily(
            METRIC_PREFIX + "cluster_nodes_live",
            "Rendezvous nodes holding a lease, as this node sees them.",
            value=len(state.live_nodes()),
        )
        yield _counter(
            "cluster_frames_refused",
            "Frames other nodes forwarded that the shared records do not allow.",
            "reason",
            stats.refused,
            [*(r.value for r in RefuseReason), "invalid_frame"],
        )
        yield _counter(
            "cluster_stream_claims",
            "Writes of stream owner records, by result.",
            "result",
            stats.claims,
            ["created", "taken_over", "conflict", "failed", *(r.value for r in ClaimRefused)],
        )
        for name, documentation, value in (
            ("cluster_lookups", "Inbound frames checked against fetched records.", stats.lookups),
            ("cluster_channels_lost", "Losses of frames between nodes.", stats.channels_lost),
            ("cluster_lease_losses", "Times this node lost its lease.", stats.lease_losses),
        ):
            family = CounterMetricFamily(METRIC_PREFIX + name, documentation)
            family.add_metric([], value)
            yield family
        bus_stats = getattr(router.bus, "stats", None)
        frames = CounterMetricFamily(
            METRIC_PREFIX + "cluster_bus_frames",
            "Relay frames forwarded to or from other nodes.",
            labels=["direction"],
        )
        sizes = CounterMetricFamily(
            METRIC_PREFIX + "cluster_bus_bytes",
            "Relay frame bytes forwarded to or from other nodes.",
            labels=["direction"],
        )
        for direction in ("sent", "received"):
            frames.add_metric([direction], getattr(bus_stats, f"frames_{direction}", 0))
            sizes.add_metric([direction], getattr(bus_stats, f"bytes_{direction}", 0))
        yield frames
        yield sizes


def make_registry(router: Router, registry_stats: RegistryStats) -> CollectorRegistry:
    """A private registry holding only this server's collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RendezvousCollector(router, registry_stats))
    if isinstance(router, ClusterRouter):
        registry.register(ClusterCollector(router))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (``text/plain; version=0.0.4``)."""
    return generate_latest(registry)
