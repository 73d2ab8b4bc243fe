"""The rendezvous service: registry HTTP API, relay websocket endpoint, health, metrics.

One aiohttp application; :class:`RendezvousServer` is its Python API (what ``exec-server
rendezvous`` and embedding processes such as ``exec-server up`` or tests use).

HTTP API (bearer = ``Authorization: Bearer <token>``, see
:mod:`~exec_server.rendezvous.credentials`; errors are always
``{"error": {"code": str, "message": str}}``, the shape Codex's executor prints):

``POST /cloud/{environment|executor}/{id}/register``
    Bearer. Codex 0.133 sends no body; ours may add ``?name=`` or ``{"name": str}``. 200
    with ``{"<flavour>_id": id, "url": <signed role=environment ws URL>}``. ``id`` is
    1-256 of ``[A-Za-z0-9_-]`` (else 400 ``invalid_<flavour>_id``). A Noise registration
    body (``security_profile``, Codex 0.142+) records the executor's public key and adds
    ``"security_profile"`` and ``"executor_registration_id"`` to the answer
    (:mod:`~exec_server.rendezvous.noise_registry`); a legacy registration forgets it.
``POST /cloud/{environment|executor}/{id}/connect``
    Bearer; optional ``{"lifetime_s": number}``. 200 with ``{"<flavour>_id", "url"
    (signed role=harness ws URL), "expires_at" (RFC 3339), "online": bool}``. With
    ``{"harness_public_key": ...}`` (Codex's Noise harness) the answer is the Noise bundle:
    plus ``security_profile``, ``executor_registration_id``, ``executor_public_key`` and
    ``harness_key_authorization`` (409 ``no_noise_registration`` when the environment has
    no Noise key).
``POST /cloud/{environment|executor}/{id}/validate``
    Bearer (the executor's). Codex's Noise executor asks whether a harness key may use its
    registration: ``{"valid": true}`` or ``{"valid": false, "reason": str}``.
``GET /cloud/environments``
    Bearer. A JSON list of ``{"id", "name", "online", "streams", "last_seen"}`` (on a
    cluster node: every environment of the cluster).
``GET /relay/{id}?role=&exp=&nonce=&sig=``
    The relay websocket (:mod:`~exec_server.rendezvous.url_signing`); refused before the
    upgrade with 401 (missing, malformed, expired) or 403 (bad signature). Routing is
    :mod:`~exec_server.rendezvous.router`'s.
``GET /readyz``, ``GET /livez``, ``GET /metrics``
    Unauthenticated; ``/readyz`` is 503 once shutdown begins, and on a cluster node
    while it cannot serve (``{"error": {"code": "nats_disconnected" | "lease_lost" |
    "syncing", ...}}``); new relay sockets and registry calls are then refused with the
    same 503, so clients move to another node.

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
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.tcp_helpers import tcp_nodelay
from prometheus_client import CollectorRegistry

from ..concurrency import run_until
from ..relay.control import CONTROL_SUBPROTOCOL
from ..relay.frame_codec import DEFAULT_MAX_FRAME_BYTES, INBOUND_LIMITS
from ..transport.listen_url import ListenUrlError, parse_ip_port_url
from ..transport.websocket import DEFAULT_PONG_TIMEOUT_S, Keepalive, KeepaliveConfig
from .cluster.state import URL_SIGNING_SECRET, ClusterState, LocalClusterState
from .credentials import ResolvedToken, bearer_matches, ensure_private_dir, resolve_token
from .errors import SocketProtocolError, UrlRejected
from .metrics import RegistryStats, make_registry, render
from .noise_registry import (
    DEFAULT_AUTHORIZATION_LIFETIME_S,
    SECURITY_PROFILE,
    AuthorizationRefused,
    HarnessKeyAuthorizer,
    NoiseRegistration,
    NoiseRegistry,
    RefusalReason,
    RegistryRefusal,
)
from .registration_store import MemoryRegistrationStore, SqliteRegistrationStore
from .router import (
    DEFAULT_ENVIRONMENT_GRACE_S,
    DEFAULT_HARNESS_GRACE_S,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_FRAMES,
    DEFAULT_MAX_SOCKET_BUFFER_BYTES,
    DEFAULT_MAX_STREAM_BUFFER_BYTES,
    DEFAULT_MAX_STREAMS_PER_ENVIRONMENT,
    DEFAULT_SLOW_HARNESS_TIMEOUT_S,
    DEFAULT_STREAM_PAUSE_BYTES,
    REPLACED_CLOSE_CODE,
    UNSUPPORTED_DATA_CLOSE_CODE,
    ProtocolErrorReason,
    Router,
    RouterConfig,
    SocketPeer,
)
from .url_signing import RELAY_PATH_PREFIX, UrlRole, UrlSigner, websocket_base_url

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

DEFAULT_LISTEN_URL = "http://127.0.0.1:0"

DEFAULT_ENVIRONMENT_URL_LIFETIME_S = 600.0
"""Validity of a registration's URL: environments re-register before every connect."""

DEFAULT_HARNESS_URL_LIFETIME_S = 24 * 3600.0
"""Validity of a harness URL; a harness reuses it for every reconnect of its session."""

MAX_HARNESS_URL_LIFETIME_S = 30 * 24 * 3600.0
"""Longest ``lifetime_s`` a ``/connect`` caller may ask for."""

DEFAULT_MAX_MESSAGE_BYTES = DEFAULT_MAX_FRAME_BYTES
"""Largest websocket message accepted: 64 MiB, what legacy Codex peers accept."""

DEFAULT_PING_INTERVAL_S = 30.0
"""Server websocket ping interval (a peer silent for ``pong_timeout_s`` is dropped)."""

MAX_REGISTRY_BODY_BYTES = 64 * 1024
"""Largest HTTP request body on the registry endpoints."""

MAX_NAME_CHARS = 256
"""Longest environment display name."""

SHUTDOWN_CLOSE_TIMEOUT_S = 2.0
"""Per-socket close handshake budget during shutdown."""

CLUSTER_TOKEN_SECRET = "registry-token"
"""Cluster secret used as the bearer token when none is configured."""

AUTHORIZATION_EPOCH_SECRET = "authorization-epoch"
"""Cluster secret binding harness key authorizations to the cluster (one node's used
nonces are every node's, so an authorization outlives the node that issued it)."""

NOT_READY_CLOSE_CODE = 1013
"""Websocket close code ("try again later") for a socket a node cannot route."""

ENVIRONMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_FLAVOURS = ("environment", "executor")


def parse_listen_url(url: str) -> tuple[str, int]:
    """``http://IP:PORT`` -> (host, port)."""
    return parse_ip_port_url(url, "http", "`http://IP:PORT`")


def is_valid_environment_id(environment_id: str) -> bool:
    """1-256 characters of ``[A-Za-z0-9_-]`` (it is interpolated into URL paths)."""
    return ENVIRONMENT_ID_PATTERN.match(environment_id) is not None


@dataclass(frozen=True)
class RendezvousConfig:
    """Everything configurable; the defaults are the CLI's."""

    data_dir: Path | None = None
    """Token, URL-signing secret and registrations persist here; memory/temp without."""
    token: str | None = None
    """Bearer token; overrides ``EXEC_SERVER_RENDEZVOUS_TOKEN`` and the data dir file."""
    public_url: str | None = None
    """Base URL clients reach us at (``http(s)://host[:port][/prefix]``), used for the
    websocket URLs we hand out. Default: the HTTP request's ``Host``."""
    environment_grace_s: float = DEFAULT_ENVIRONMENT_GRACE_S
    harness_grace_s: float = DEFAULT_HARNESS_GRACE_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_queue_frames: int = DEFAULT_MAX_QUEUE_FRAMES
    stream_pause_bytes: int = DEFAULT_STREAM_PAUSE_BYTES
    max_stream_buffer_bytes: int = DEFAULT_MAX_STREAM_BUFFER_BYTES
    max_socket_buffer_bytes: int = DEFAULT_MAX_SOCKET_BUFFER_BYTES
    slow_harness_timeout_s: float = DEFAULT_SLOW_HARNESS_TIMEOUT_S
    """A legacy stream paused this long for its harness is reset (``harness_too_slow``)."""
    max_streams_per_environment: int = DEFAULT_MAX_STREAMS_PER_ENVIRONMENT
    environment_url_lifetime_s: float = DEFAULT_ENVIRONMENT_URL_LIFETIME_S
    harness_url_lifetime_s: float = DEFAULT_HARNESS_URL_LIFETIME_S
    max_harness_url_lifetime_s: float = MAX_HARNESS_URL_LIFETIME_S
    ping_interval_s: float | None = DEFAULT_PING_INTERVAL_S
    """``None`` disables server pings."""
    pong_timeout_s: float = DEFAULT_PONG_TIMEOUT_S
    """A socket silent this long (not even a pong) is dropped (``pong_timeout``)."""
    authorization_lifetime_s: float = DEFAULT_AUTHORIZATION_LIFETIME_S
    """Validity of a Noise ``harness_key_authorization`` (``/connect`` to ``/validate``)."""
    cluster: NatsClusterConfig | None = None
    """Join a cluster of rendezvous nodes on NATS instead of running alone (then
    ``data_dir`` is not used: the shared state lives in NATS)."""

    def router_config(self) -> RouterConfig:
        return RouterConfig(
            environment_grace_s=self.environment_grace_s,
            harness_grace_s=self.harness_grace_s,
            max_queue_bytes=self.max_queue_bytes,
            max_queue_frames=self.max_queue_frames,
            stream_pause_bytes=self.stream_pause_bytes,
            max_stream_buffer_bytes=self.max_stream_buffer_bytes,
            max_socket_buffer_bytes=self.max_socket_buffer_bytes,
            slow_harness_timeout_s=self.slow_harness_timeout_s,
            max_streams_per_environment=self.max_streams_per_environment,
            frame_limits=dataclasses.replace(
                INBOUND_LIMITS, max_frame_bytes=self.max_message_bytes
            ),
        )

    def keepalive(self) -> KeepaliveConfig:
        return KeepaliveConfig(self.ping_interval_s, self.pong_timeout_s)


class _RegistryError(Exception):
    """An error answer of the registry API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
                self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
            )
            await runner.setup()
            self._runner = runner
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        except BaseException:
            await self.close()
            raise
        bound = runner.addresses[0]
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self._base_url = f"http://{bound_host}:{bound[1]}"
        self._ready = True
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
            self._public_ws_base(None),
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
            self._public_ws_base(None),
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

    def _public_ws_base(self, request: web.Request | None) -> str:
        if self.config.public_url:
            return websocket_base_url(self.config.public_url)
        if request is not None and request.host:
            return f"{'wss' if request.secure else 'ws'}://{request.host}"
        return websocket_base_url(self.base_url)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a short background job owned by the server (:meth:`close` cancels and
        awaits what is still running)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- application -----------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_REGISTRY_BODY_BYTES, middlewares=[self._json_errors]
        )
        flavour = "{flavour:environment|executor}"
        app.router.add_post(f"/cloud/{flavour}/{{id:[^/]*}}/register", self._register)
        app.router.add_post(f"/cloud/{flavour}/{{id:[^/]*}}/connect", self._connect)
        app.router.add_post(f"/cloud/{flavour}/{{id:[^/]*}}/validate", self._validate)
        app.router.add_get("/cloud/environments", self._list_environments)
        app.router.add_get(RELAY_PATH_PREFIX + "{id:[^/]*}", self._relay)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/metrics", self._metrics_handler)
        return app

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except (_RegistryError, RegistryRefusal) as exc:
            return _error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = (exc.reason or "error").lower().replace(" ", "_")
            return _error_response(exc.status, code, exc.reason or "error")
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error_response(500, "internal_error", "internal rendezvous error")

    def _check_bearer(self, request: web.Request) -> None:
        if not bearer_matches(request.headers.get("Authorization"), self.token):
            raise _RegistryError(401, "unauthorized", "missing or invalid bearer token")

    def _check_id(self, request: web.Request) -> tuple[str, str]:
        flavour, environment_id = request.match_info["flavour"], request.match_info["id"]
        if not is_valid_environment_id(environment_id):
            raise _RegistryError(
                400,
                f"invalid_{flavour}_id",
                f"invalid {flavour} id: expected 1-256 characters of [A-Za-z0-9_-]",
            )
        return flavour, environment_id

    async def _register(self, request: web.Request) -> web.Response:
        try:
            self._check_bearer(request)
            self._check_ready()
            flavour, environment_id = self._check_id(request)
            body = await _json_body(request)
            name = _display_name(request.query.get("name", body.get("name")))
            noisy = "security_profile" in body or "executor_public_key" in body
            if noisy and self._bus is not None:
                await self._noise_registration(environment_id)  # the cluster's, if any
            noise = self.noise_registry.register(environment_id, body) if noisy else None
        except (_RegistryError, RegistryRefusal) as exc:
            self.registry_stats.registrations[exc.code] += 1
            raise
        state = self.state
        now = time.time()
        await state.upsert_registration(environment_id, name, now)
        if noise is not None:
            key_json = noise.executor_key.to_json()
            await state.put_noise_registration(environment_id, noise.registration_id, key_json)
        else:
            self.noise_registry.forget(environment_id)
            await state.delete_noise_registration(environment_id)
        self.router.expect_environment(environment_id)
        url = self.signer.sign(
            self._public_ws_base(request),
            UrlRole.ENVIRONMENT,
            environment_id,
            lifetime_s=self.config.environment_url_lifetime_s,
            now=now,
        )
        self.registry_stats.registrations["ok"] += 1
        log.info(
            "%s %s registered%s",
            flavour,
            environment_id,
            f" (Noise key {noise.executor_key.fingerprint})" if noise else "",
        )
        answer = {f"{flavour}_id": environment_id, "url": url}
        if noise is not None:
            answer["security_profile"] = SECURITY_PROFILE
            answer["executor_registration_id"] = noise.registration_id
        return web.json_response(answer)

    async def _connect(self, request: web.Request) -> web.Response:
        try:
            self._check_bearer(request)
            self._check_ready()
            flavour, environment_id = self._check_id(request)
            body = await _json_body(request)
            if "harness_public_key" in body:
                return await self._connect_noise(request, flavour, environment_id, body)
            lifetime_s = body.get("lifetime_s", self.config.harness_url_lifetime_s)
            if (
                isinstance(lifetime_s, bool)
                or not isinstance(lifetime_s, int | float)
                or not math.isfinite(lifetime_s)
                or not 0 < lifetime_s <= self.config.max_harness_url_lifetime_s
            ):
                raise _RegistryError(
                    400,
                    "invalid_request",
                    "lifetime_s must be a number of seconds in "
                    f"(0, {self.config.max_harness_url_lifetime_s:g}]",
                )
        except _RegistryError as exc:
            self.registry_stats.harness_urls[exc.code] += 1
            raise
        now = time.time()
        url = self.signer.sign(
            self._public_ws_base(request),
            UrlRole.HARNESS,
            environment_id,
            lifetime_s=float(lifetime_s),
            now=now,
        )
        self.registry_stats.harness_urls["ok"] += 1
        return web.json_response(
            {
                f"{flavour}_id": environment_id,
                "url": url,
                "expires_at": _rfc3339(math.ceil(now + lifetime_s)),
                "online": self.router.is_online(environment_id),
            }
        )

    @property
    def noise_registry(self) -> NoiseRegistry:
        if self._noise is None:
            raise RuntimeError("the rendezvous is not started")
        return self._noise

    async def _noise_registration(self, environment_id: str) -> NoiseRegistration | None:
        """The registration in memory, else as persisted by a previous process. A cluster
        node always reads the shared record (another node may have registered a new key)."""
        noise = self.noise_registry
        registration = noise.registration(environment_id)
        cluster = self._bus is not None
        if (registration is None or cluster) and self._state is not None:
            stored = await self._state.get_noise_registration(environment_id)
            if cluster:
                noise.forget(environment_id)
                registration = None
            if stored is not None:
                from ..relay.noise import NoisePublicKey  # lazily: see noise_registry

                registration = NoiseRegistration(
                    environment_id, stored[0], NoisePublicKey.from_json(stored[1])
                )
                noise.restore(registration)
        return registration

    async def _connect_noise(
        self, request: web.Request, flavour: str, environment_id: str, body: dict[str, Any]
    ) -> web.Response:
        try:
            await self._noise_registration(environment_id)
            now = time.time()
            registration, authorization = self.noise_registry.connect(environment_id, body, now)
        except RegistryRefusal as exc:
            self.registry_stats.harness_urls[exc.code] += 1
            raise
        lifetime_s = self.config.harness_url_lifetime_s
        url = self.signer.sign(
            self._public_ws_base(request),
            UrlRole.HARNESS,
            environment_id,
            lifetime_s=lifetime_s,
            now=now,
        )
        self.registry_stats.harness_urls["ok"] += 1
        return web.json_response(
            {
                f"{flavour}_id": environment_id,
                "url": url,
                "security_profile": SECURITY_PROFILE,
                "executor_registration_id": registration.registration_id,
                "executor_public_key": registration.executor_key.to_json_obj(),
                "harness_key_authorization": authorization,
                "expires_at": _rfc3339(math.ceil(now + lifetime_s)),
                "online": self.router.is_online(environment_id),
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        stats = self.registry_stats.harness_key_validations
        try:
            self._check_bearer(request)
            _, environment_id = self._check_id(request)
            body = await _json_body(request)
            self._check_ready()
            await self._noise_registration(environment_id)
            stream_id = request.headers.get("x-codex-noise-stream-id", "")[:256]
            self.noise_registry.validate(environment_id, body, stream_id, time.time())
            await self._consume_across_cluster(body, stream_id)
        except (_RegistryError, RegistryRefusal) as exc:
            stats[exc.code] += 1
            raise
        except AuthorizationRefused as exc:
            stats[exc.reason.value] += 1
            log.info("refused a harness key for %s: %s", environment_id, exc.reason.value)
            return web.json_response({"valid": False, "reason": exc.reason.value})
        stats["valid"] += 1
        return web.json_response({"valid": True})

    async def _consume_across_cluster(self, body: dict[str, Any], stream_id: str) -> None:
        """An authorization this node accepted is used up on every node (the first
        ``/validate`` anywhere wins); one node alone keeps its own single-use record."""
        if self._bus is None:
            return
        nonce = str(body["harness_key_authorization"]).split(".")[2]
        if not await self.state.consume_authorization(nonce, stream_id):
            raise AuthorizationRefused(
                RefusalReason.REPLAYED, "the authorization was used on another node"
            )

    async def _list_environments(self, request: web.Request) -> web.Response:
        self._check_bearer(request)
        self._check_ready()
        router = self.router
        now = time.time()
        rows = [
            {
                "id": row.environment_id,
                "name": row.name,
                "online": router.is_online(row.environment_id),
                "streams": router.stream_count(row.environment_id),
                "last_seen": _rfc3339(
                    now if router.is_online(row.environment_id) else row.last_seen
                ),
            }
            for row in await self.state.list_registrations()
        ]
        return web.json_response(rows)

    def _not_ready(self) -> tuple[str, str] | None:
        """``(code, message)`` when this node must not take new work, else None."""
        if not self._ready:
            return "shutting_down", "the rendezvous is shutting down"
        readiness = self._state.readiness() if self._state is not None else None
        if readiness is not None and not readiness.ready:
            return readiness.reason, f"this rendezvous node cannot serve: {readiness.reason}"
        return None

    def _check_ready(self) -> None:
        refusal = self._not_ready()
        if refusal is not None and self._bus is not None:
            raise _RegistryError(503, *refusal)

    async def _readyz(self, request: web.Request) -> web.Response:
        refusal = self._not_ready()
        if refusal is not None:
            return _error_response(503, *refusal)
        return web.json_response({"status": "ready"})

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        return web.Response(
            body=render(self._metrics), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    # --- relay websocket -------------------------------------------------------------

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        environment_id = request.match_info["id"]
        try:
            grant = self.signer.verify(environment_id, request.query_string, now=time.time())
        except UrlRejected as exc:
            self.registry_stats.upgrades[exc.reason.value] += 1
            log.info("refused relay websocket for %r: %s", environment_id[:64], exc)
            return _error_response(exc.reason.http_status, exc.reason.value, exc.detail)
        ws = _RelayWebSocket(
            compress=False,
            max_msg_size=self.config.max_message_bytes,
            autoping=False,
            decode_text=False,
            timeout=SHUTDOWN_CLOSE_TIMEOUT_S,
            protocols=(CONTROL_SUBPROTOCOL,),
        )
        if not ws.can_prepare(request).ok:
            return _error_response(400, "websocket_required", "expected a websocket upgrade")
        refusal = self._not_ready()
        if refusal is not None:
            return _error_response(503, *refusal)
        await ws.prepare(request)
        if request.transport is not None:
            tcp_nodelay(request.transport, True)
        self.registry_stats.upgrades["accepted"] += 1
        router = self.router
        peer = router.new_peer(
            ws,
            grant.role,
            environment_id,
            grant.nonce,
            label=_label(grant.role, request),
            control=ws.ws_protocol == CONTROL_SUBPROTOCOL,
        )
        if grant.role is UrlRole.ENVIRONMENT:
            refused = await router.claim(peer)
            if refused is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(SHUTDOWN_CLOSE_TIMEOUT_S):
                        await ws.close(code=refused, message=b"another rendezvous socket won")
                return ws
        replaced = router.attach(peer)
        self._peers.add(peer)
        if replaced is not None:
            self._spawn(
                replaced.aclose(
                    code=REPLACED_CLOSE_CODE, message=b"replaced by a newer environment socket"
                )
            )
        if grant.role is UrlRole.ENVIRONMENT:
            self._spawn(self._seen(environment_id))
        log.info("%s connected", peer.label)
        keepalive = Keepalive(ws, self.config.keepalive())
        try:
            # The reader, and the keepalive that closes a silent socket: whichever ends
            # first ends the other.
            await run_until(None, self._read(ws, peer, keepalive), self._watch(keepalive, peer))
        finally:
            router.detach(peer)
            self._peers.discard(peer)
            await peer.aclose()
            if grant.role is UrlRole.ENVIRONMENT:
                self._spawn(self._seen(environment_id))
            log.info("%s disconnected (close code %s)", peer.label, ws.close_code)
        return ws

    async def _watch(self, keepalive: Keepalive, peer: SocketPeer) -> None:
        """Close the socket once its keepalive gives up (its reader then ends)."""
        reason = await keepalive.run()
        log.info("%s: %s; closing it", peer.label, reason)
        await peer.aclose(code=WSCloseCode.GOING_AWAY, message=reason.encode()[:120])

    async def _read(
        self, ws: web.WebSocketResponse, peer: SocketPeer, keepalive: Keepalive
    ) -> None:
        """Feed the socket's messages to the router until it closes or breaks the
        protocol. Only an environment reader never waits for anything but its socket (a
        slow harness must not stall it); a harness reader waits for room at the
        environment."""
        router = self.router
        environment = peer.role is UrlRole.ENVIRONMENT
        try:
            while True:
                msg = await ws.receive()
                keepalive.heard_count += 1
                kind = msg.type
                if kind is WSMsgType.BINARY:
                    if environment:
                        router.on_environment_message(peer, msg.data)
                    else:
                        await router.on_harness_message(peer, msg.data)
                elif kind is WSMsgType.PING:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                elif kind is WSMsgType.PONG:
                    continue
                elif kind is WSMsgType.TEXT:
                    raise SocketProtocolError(
                        UNSUPPORTED_DATA_CLOSE_CODE,
                        ProtocolErrorReason.TEXT_FRAME,
                        "text message on a binary relay socket",
                    )
                else:
                    if (
                        kind is WSMsgType.ERROR
                        and getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG
                    ):
                        router.stats.protocol_errors[ProtocolErrorReason.OVERSIZE] += 1
                        log.info("%s closed: message over the size limit", peer.label)
                    return
        except SocketProtocolError as exc:
            router.stats.protocol_errors[exc.reason] += 1
            log.info("%s closed (%d): %s", peer.label, exc.close_code, exc.message)
            await peer.aclose(code=exc.close_code, message=exc.message.encode()[:120])

    async def _seen(self, environment_id: str) -> None:
        if self._state is not None:
            with contextlib.suppress(Exception):
                await self._state.upsert_registration(environment_id, None, time.time())


class _RelayWebSocket(web.WebSocketResponse):
    """aiohttp closes a socket whose message is over ``max_msg_size`` itself, with code
    1009 and no reason; this gives that close a reason the peer can log."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message:
            message = b"relay message over the size limit"
        return await super().close(code=code, message=message, drain=drain)


_END_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


def _error_response(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 and code == "unauthorized" else None
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body (Codex sends none) is ``{}``."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _RegistryError(400, "invalid_request", "the request body must be a JSON object")
    return data


def _display_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise _RegistryError(
            400, "invalid_request", f"name must be printable text of at most {MAX_NAME_CHARS}"
        )
    return value.strip() or None


def _rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _label(role: UrlRole, request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    where = f" from {peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else ""
    return f"{role.value} socket for {request.match_info['id']}{where}"
