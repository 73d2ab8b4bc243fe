"""Rendezvous and registry: where environments register and harnesses find them.

Layout (each module's docstring states its contract, limits and failure modes):

* :mod:`~exec_server.rendezvous.server`: :class:`RendezvousServer`, the aiohttp
  application (registry HTTP API, relay websocket endpoint, health, metrics);
* :mod:`~exec_server.rendezvous.router`: routes relay frames by ``stream_id`` between an
  environment socket and its harness sockets, with ownership, grace periods and bounded
  per-socket queues;
* :mod:`~exec_server.rendezvous.url_signing`: HMAC-signed, expiring websocket URLs;
* :mod:`~exec_server.rendezvous.credentials`: the bearer token and the signing secret;
* :mod:`~exec_server.rendezvous.registration_store`: registrations (SQLite or memory);
* :mod:`~exec_server.rendezvous.metrics`: Prometheus exposition;
* :mod:`~exec_server.rendezvous.cluster` and
  :mod:`~exec_server.rendezvous.cluster_router`: several rendezvous nodes on NATS
  (shared state, frames forwarded between nodes, the router of one node).
"""

from .credentials import TOKEN_ENV, bearer_matches, resolve_token
from .errors import CredentialError, RendezvousError, UrlRejected, UrlRejectReason
from .router import DropReason, ResetReason, Router, RouterConfig, RouterStats
from .server import RendezvousConfig, RendezvousServer, is_valid_environment_id
from .url_signing import (
    SignedGrant,
    UrlRole,
    UrlSigner,
    sign_url,
    verify_url,
    websocket_base_url,
)

__all__ = [
    "TOKEN_ENV",
    "CredentialError",
    "DropReason",
    "RendezvousConfig",
    "RendezvousError",
    "RendezvousServer",
    "ResetReason",
    "Router",
    "RouterConfig",
    "RouterStats",
    "SignedGrant",
    "UrlRejectReason",
    "UrlRejected",
    "UrlRole",
    "UrlSigner",
    "bearer_matches",
    "is_valid_environment_id",
    "resolve_token",
    "sign_url",
    "verify_url",
    "websocket_base_url",
]
