"""The rendezvous service: registry HTTP API, relay websocket endpoint, health, metrics.

:class:`RendezvousServer` is its Python API (what ``exec-server rendezvous`` and
embedding processes such as ``exec-server up`` or tests use): it owns the credentials,
the shared state, the router and one listening port, on which
:class:`~exec_server.rendezvous.port.PortSplitter` hands each connection to the
registry's HTTP routes (:mod:`~exec_server.rendezvous.registry_api`, aiohttp) or, for a
relay websocket upgrade, to :mod:`~exec_server.rendezvous.relay_endpoint` (picows).

Cluster (``RendezvousConfig.cluster``, ``exec-server rendezvous --cluster``): the
registrations, Noise keys, used authorizations, the URL-signing secret and the bearer
token (unless one is configured) are shared through NATS
(:mod:`~exec_server.rendezvous.cluster`), so any node serves any registry call and
verifies any URL; relay routing is :mod:`~exec_server.rendezvous.cluster_router`'s.
URLs handed out point at the node that answered.

Websockets: no permessage-deflate, TCP_NODELAY, ``max_message_bytes`` (64 MiB by default,
what legacy Codex peers accept). Pings from peers are answered (Codex pings every 30 s);
the server pings every ``ping_interval_s`` and drops a socket silent for
``pong_timeout_s`` (``pong_timeout``), so a vanished peer releases its streams. A
socket that breaks the relay protocol is closed: 1002 for an invalid frame, 1003 for a
text message, 1009 for a message over ``max_message_bytes``, each with a short reason,
counted in ``exec_server_rendezvous_protocol_errors_total{reason}``. Sockets that offer
the :data:`~exec_server.relay.control.CONTROL_SUBPROTOCOL` get control messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..transport.listen_url import ListenUrlError
from ..transport.websocket import KeepaliveConfig
from .cluster.state import URL_SIGNING_SECRET, ClusterState, LocalClusterState
from .config import (
    DEFAULT_ENVIRONMENT_URL_LIFETIME_S,
    DEFAULT_HARNESS_URL_LIFETIME_S,
    DEFAULT_LISTEN_URL,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PING_INTERVAL_S,
    MAX_HARNESS_URL_LIFETIME_S,
    RendezvousConfig,
    is_valid_environment_id,
    parse_listen_url,
)
from .credentials import ResolvedToken, ensure_private_dir, resolve_token
from .metrics import RegistryStats, make_registry
from .noise_registry import HarnessKeyAuthorizer, NoiseRegistry
from .port import PortSplitter
from .registration_store import MemoryRegistrationStore, SqliteRegistrationStore
from .registry_api import RegistryApi
from .relay_endpoint import RelayEndpoint
from .router import Router, SocketPeer
from .url_signing import UrlRole, UrlSigner, websocket_base_url

if TYPE_CHECKING:
    # nats-py loads only when a node joins a cluster.
    from .cluster.nats_connection import NatsClusterConfig

__all__ = [
    "DEFAULT_ENVIRONMENT_URL_LIFETIME_S",
    "DEFAULT_HARNESS_URL_LIFETIME_S",
    "DEFAULT_LISTEN_URL",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PING_INTERVAL_S",
    "MAX_HARNESS_URL_LIFETIME_S",
    "ListenUrlError",
    "RendezvousConfig",
    "RendezvousServer",
    "is_valid_environment_id",
    "parse_listen_url",
]

log = logging.getLogger(__name__)

SHUTDOWN_CLOSE_TIMEOUT_S = 2.0
"""Per-socket close handshake budget during shutdown."""

CLUSTER_TOKEN_SECRET = "registry-token"
"""Cluster secret used as the bearer token when none is configured."""

AUTHORIZATION_EPOCH_SECRET = "authorization-epoch"
"""Cluster secret binding harness key authorizations to the cluster (one node's used
nonces are every node's, so an authorization outlives the node that issued it)."""

NOT_READY_CLOSE_CODE = 1013
"""Websocket close code ("try again later") for a socket a node cannot route."""


class RendezvousServer:
    """Registry + rendezvous in one process.

    ::

        server = RendezvousServer(RendezvousConfig(data_dir=path))
        base_url = await server.start("127.0.0.1", 0)   # "http://127.0.0.1:43123"
        server.token                                     # the bearer token
        server.harness_url("my-env")                     # a signed role=harness URL
        await server.close()
    """

    def __init__(self, config: RendezvousConfig | None = None) -> None:
        self.config = config or RendezvousConfig()
        self.registry_stats = RegistryStats()
        self._resolved_token: ResolvedToken | None = None
        self._signer: UrlSigner | None = None
        self._router: Router | None = None
        self._state: ClusterState | None = None
        self._bus: Any = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._peers: set[SocketPeer] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._metrics: CollectorRegistry | None = None
        self._noise: NoiseRegistry | None = None
        self._ready = False
        self._listener: asyncio.Server | None = None
        self._api = RegistryApi(self)
        self._relay = RelayEndpoint(self)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Load credentials, open the store and listen; return ``http://HOST:PORT``."""
        if self._runner is not None:
            raise RuntimeError("the rendezvous is already started")
        if self.config.cluster is not None and self.config.data_dir is not None:
            raise ValueError("data_dir is not used by a cluster node: its state lives in NATS")
        data_dir = self.config.data_dir
        try:
            if self.config.cluster is None:
                self._resolved_token = resolve_token(data_dir, explicit=self.config.token)
                if data_dir is not None:
                    ensure_private_dir(data_dir)
                epoch = None
                self._router = Router(self.config.router_config())
                self._state = LocalClusterState(
                    await SqliteRegistrationStore.open(data_dir)
                    if data_dir is not None
                    else MemoryRegistrationStore(),
                    data_dir=data_dir,
                    public_url=self.config.public_url,
                    started=time.time(),
                )
            else:
                epoch = await self._join_cluster(self.config.cluster)
            secret = await self.state.secret(URL_SIGNING_SECRET)
            self._signer = UrlSigner(secret)
            self._noise = NoiseRegistry(
                HarnessKeyAuthorizer(
                    secret, lifetime_s=self.config.authorization_lifetime_s, epoch=epoch
                )
            )
            self._metrics = make_registry(self.router, self.registry_stats)
            runner = web.AppRunner(
                self._api.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
            )
            await runner.setup()
            self._runner = runner
            http, relay = runner.server, self._relay.protocol
            assert http is not None
            self._listener = await asyncio.get_running_loop().create_server(
                lambda: PortSplitter(http, relay), host, port, reuse_address=True
            )
        except BaseException:
            await self.close()
            raise
        bound = self._listener.sockets[0].getsockname()
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self._base_url = f"http://{bound_host}:{bound[1]}"
        self._ready = True
        if self.config.freeze_gc:
            _freeze_gc_once()
        log.info("rendezvous listening on %s", self._base_url)
        return self._base_url

    async def _join_cluster(self, cluster: NatsClusterConfig) -> str:
        """Open the shared state and the frame bus; the authorization epoch."""
        from .cluster.nats_bus import NatsFrameBus
        from .cluster.nats_state import NatsClusterState
        from .cluster_router import ClusterRouter

        state = self._state = await NatsClusterState.open(cluster)
        shared_token = (await state.secret(CLUSTER_TOKEN_SECRET)).hex()
        self._resolved_token = resolve_token(None, explicit=self.config.token, shared=shared_token)
        router = ClusterRouter(self.config.router_config(), state)
        self._router = router
        self._bus = await NatsFrameBus.open(cluster, state.node, router)
        router.attach_bus(self._bus)
        log.info("rendezvous node %s joined the cluster on %s", state.node, cluster.servers)
        return (await state.secret(AUTHORIZATION_EPOCH_SECRET, 16)).hex()

    @property
    def state(self) -> ClusterState:
        """The shared state (the single-node one unless this node is in a cluster)."""
        if self._state is None:
            raise RuntimeError("the rendezvous is not started")
        return self._state

    async def close(self) -> None:
        """Close every relay socket, stop listening, and release the store and temp files."""
        self._ready = False
        peers = list(self._peers)
        if peers:
            await asyncio.gather(
                *(p.aclose(code=1001, message=b"rendezvous shutting down") for p in peers),
                return_exceptions=True,
            )
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._relay.aclose()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._router is not None:
            await self._router.aclose()
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._state is not None:
            await self._state.close()
            self._state = None
        if self._resolved_token is not None:
            self._resolved_token.cleanup()

    async def __aenter__(self) -> RendezvousServer:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- Python API ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` as bound (available after :meth:`start`)."""
        if self._base_url is None:
            raise RuntimeError("the rendezvous is not started")
        return self._base_url

    @property
    def token(self) -> str:
        """The registry bearer token."""
        if self._resolved_token is None:
            raise RuntimeError("the rendezvous is not started")
        return self._resolved_token.token

    @property
    def token_path(self) -> Path | None:
        """The file holding the token (data dir or temp file), or None (config/env)."""
        return self._resolved_token.path if self._resolved_token else None

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("the rendezvous is not started")
        return self._router

    @property
    def signer(self) -> UrlSigner:
        if self._signer is None:
            raise RuntimeError("the rendezvous is not started")
        return self._signer

    def environment_url(
        self, environment_id: str, *, lifetime_s: float | None = None, now: float | None = None
    ) -> str:
        """A signed ``role=environment`` URL, as ``/register`` returns."""
        return self._sign(
            UrlRole.ENVIRONMENT,
            environment_id,
            self.public_ws_base(None),
            lifetime_s or self.config.environment_url_lifetime_s,
            now,
        )

    def harness_url(
        self, environment_id: str, *, lifetime_s: float | None = None, now: float | None = None
    ) -> str:
        """A signed ``role=harness`` URL, as ``/connect`` returns."""
        return self._sign(
            UrlRole.HARNESS,
            environment_id,
            self.public_ws_base(None),
            lifetime_s or self.config.harness_url_lifetime_s,
            now,
        )

    def _sign(
        self, role: UrlRole, environment_id: str, base: str, lifetime_s: float, now: float | None
    ) -> str:
        if not is_valid_environment_id(environment_id):
            raise ValueError(f"invalid environment id {environment_id!r}")
        return self.signer.sign(
            base,
            role,
            environment_id,
            lifetime_s=lifetime_s,
            now=time.time() if now is None else now,
        )

    def public_ws_base(self, request: web.Request | None) -> str:
        if self.config.public_url:
            return websocket_base_url(self.config.public_url)
        if request is not None and request.host:
            return f"{'wss' if request.secure else 'ws'}://{request.host}"
        return websocket_base_url(self.base_url)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a short background job owned by the server (:meth:`close` cancels and
        awaits what is still running)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- what the registry routes and the relay endpoint use ---------------------------

    @property
    def noise_registry(self) -> NoiseRegistry:
        if self._noise is None:
            raise RuntimeError("the rendezvous is not started")
        return self._noise

    @property
    def clustered(self) -> bool:
        """This node is part of a cluster."""
        return self._bus is not None

    @property
    def metrics_registry(self) -> CollectorRegistry:
        if self._metrics is None:
            raise RuntimeError("the rendezvous is not started")
        return self._metrics

    @property
    def keepalive(self) -> KeepaliveConfig:
        return self.config.keepalive()

    def not_ready(self) -> tuple[str, str] | None:
        """``(code, message)`` when this node must not take new work, else None."""
        if not self._ready:
            return "shutting_down", "the rendezvous is shutting down"
        readiness = self._state.readiness() if self._state is not None else None
        if readiness is not None and not readiness.ready:
            return readiness.reason, f"this rendezvous node cannot serve: {readiness.reason}"
        return None

    def track(self, peer: SocketPeer) -> None:
        """An admitted relay socket (closed by :meth:`close`)."""
        self._peers.add(peer)

    def untrack(self, peer: SocketPeer) -> None:
        self._peers.discard(peer)

    async def seen(self, environment_id: str) -> None:
        """Record that an environment was connected just now."""
        if self._state is not None:
            with contextlib.suppress(Exception):
                await self._state.upsert_registration(environment_id, None, time.time())


_gc_frozen = False


def _freeze_gc_once() -> None:
    """``gc.freeze()`` what is alive now, the first time a server starts in a process."""
    global _gc_frozen
    if not _gc_frozen:
        _gc_frozen = True
        gc.collect()
        gc.freeze()
