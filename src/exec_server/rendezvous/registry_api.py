"""The rendezvous' HTTP routes (aiohttp): the registry API, health and metrics.

HTTP API (bearer = ``Authorization: Bearer <token>``, see
:mod:`~exec_server.rendezvous.credentials`; errors are always
``{"error": {"code": str, "message": str}}``, the shape Codex's executor prints; every
answer closes its connection, ``Connection: close``, since the relay websockets share
the port: :mod:`~exec_server.rendezvous.port`):

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
    upgrade with 401 (missing, malformed, expired) or 403 (bad signature). Upgrades are
    :mod:`~exec_server.rendezvous.relay_endpoint`'s; a plain ``GET`` of a valid URL is
    400 ``websocket_required`` here. Routing is :mod:`~exec_server.rendezvous.router`'s.
``GET /readyz``, ``GET /livez``, ``GET /metrics``
    Unauthenticated; ``/readyz`` is 503 once shutdown begins, and on a cluster node
    while it cannot serve (``{"error": {"code": "nats_disconnected" | "lease_lost" |
    "syncing", ...}}``); new relay sockets and registry calls are then refused with the
    same 503, so clients move to another node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import MAX_NAME_CHARS, MAX_REGISTRY_BODY_BYTES, is_valid_environment_id
from .credentials import bearer_matches
from .errors import UrlRejected
from .metrics import render
from .noise_registry import (
    SECURITY_PROFILE,
    AuthorizationRefused,
    NoiseRegistration,
    RefusalReason,
    RegistryRefusal,
)
from .port import close_after_response
from .url_signing import RELAY_PATH_PREFIX, UrlRole

if TYPE_CHECKING:
    from .server import RendezvousServer

__all__ = ["RegistryApi"]

log = logging.getLogger(__name__)


class _RegistryError(Exception):
    """An error answer of the registry API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RegistryApi:
    """The HTTP routes of one :class:`~exec_server.rendezvous.server.RendezvousServer`."""

    def __init__(self, server: RendezvousServer) -> None:
        self._server = server

    def make_app(self) -> web.Application:
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
        app.on_response_prepare.append(close_after_response)
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
        if not bearer_matches(request.headers.get("Authorization"), self._server.token):
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
            if noisy and self._server.clustered:
                await self._noise_registration(environment_id)  # the cluster's, if any
            noise = self._server.noise_registry.register(environment_id, body) if noisy else None
        except (_RegistryError, RegistryRefusal) as exc:
            self._server.registry_stats.registrations[exc.code] += 1
            raise
        state = self._server.state
        now = time.time()
        await state.upsert_registration(environment_id, name, now)
        if noise is not None:
            key_json = noise.executor_key.to_json()
            await state.put_noise_registration(environment_id, noise.registration_id, key_json)
        else:
            self._server.noise_registry.forget(environment_id)
            await state.delete_noise_registration(environment_id)
        self._server.router.expect_environment(environment_id)
        url = self._server.signer.sign(
            self._server.public_ws_base(request),
            UrlRole.ENVIRONMENT,
            environment_id,
            lifetime_s=self._server.config.environment_url_lifetime_s,
            now=now,
        )
        self._server.registry_stats.registrations["ok"] += 1
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
            lifetime_s = body.get("lifetime_s", self._server.config.harness_url_lifetime_s)
            if (
                isinstance(lifetime_s, bool)
                or not isinstance(lifetime_s, int | float)
                or not math.isfinite(lifetime_s)
                or not 0 < lifetime_s <= self._server.config.max_harness_url_lifetime_s
            ):
                raise _RegistryError(
                    400,
                    "invalid_request",
                    "lifetime_s must be a number of seconds in "
                    f"(0, {self._server.config.max_harness_url_lifetime_s:g}]",
                )
        except _RegistryError as exc:
            self._server.registry_stats.harness_urls[exc.code] += 1
            raise
        now = time.time()
        url = self._server.signer.sign(
            self._server.public_ws_base(request),
            UrlRole.HARNESS,
            environment_id,
            lifetime_s=float(lifetime_s),
            now=now,
        )
        self._server.registry_stats.harness_urls["ok"] += 1
        return web.json_response(
            {
                f"{flavour}_id": environment_id,
                "url": url,
                "expires_at": _rfc3339(math.ceil(now + lifetime_s)),
                "online": self._server.router.is_online(environment_id),
            }
        )

    async def _noise_registration(self, environment_id: str) -> NoiseRegistration | None:
        """The registration in memory, else as persisted by a previous process. A cluster
        node always reads the shared record (another node may have registered a new key)."""
        noise = self._server.noise_registry
        registration = noise.registration(environment_id)
        cluster = self._server.clustered
        if registration is None or cluster:
            stored = await self._server.state.get_noise_registration(environment_id)
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
            registration, authorization = self._server.noise_registry.connect(
                environment_id, body, now
            )
        except RegistryRefusal as exc:
            self._server.registry_stats.harness_urls[exc.code] += 1
            raise
        lifetime_s = self._server.config.harness_url_lifetime_s
        url = self._server.signer.sign(
            self._server.public_ws_base(request),
            UrlRole.HARNESS,
            environment_id,
            lifetime_s=lifetime_s,
            now=now,
        )
        self._server.registry_stats.harness_urls["ok"] += 1
        return web.json_response(
            {
                f"{flavour}_id": environment_id,
                "url": url,
                "security_profile": SECURITY_PROFILE,
                "executor_registration_id": registration.registration_id,
                "executor_public_key": registration.executor_key.to_json_obj(),
                "harness_key_authorization": authorization,
                "expires_at": _rfc3339(math.ceil(now + lifetime_s)),
                "online": self._server.router.is_online(environment_id),
            }
        )

    async def _validate(self, request: web.Request) -> web.Response:
        stats = self._server.registry_stats.harness_key_validations
        try:
            self._check_bearer(request)
            _, environment_id = self._check_id(request)
            body = await _json_body(request)
            self._check_ready()
            await self._noise_registration(environment_id)
            stream_id = request.headers.get("x-codex-noise-stream-id", "")[:256]
            self._server.noise_registry.validate(environment_id, body, stream_id, time.time())
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
        if not self._server.clustered:
            return
        nonce = str(body["harness_key_authorization"]).split(".")[2]
        if not await self._server.state.consume_authorization(nonce, stream_id):
            raise AuthorizationRefused(
                RefusalReason.REPLAYED, "the authorization was used on another node"
            )

    async def _list_environments(self, request: web.Request) -> web.Response:
        self._check_bearer(request)
        self._check_ready()
        router = self._server.router
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
            for row in await self._server.state.list_registrations()
        ]
        return web.json_response(rows)

    def _check_ready(self) -> None:
        refusal = self._server.not_ready()
        if refusal is not None and self._server.clustered:
            raise _RegistryError(503, *refusal)

    async def _readyz(self, request: web.Request) -> web.Response:
        refusal = self._server.not_ready()
        if refusal is not None:
            return _error_response(503, *refusal)
        return web.json_response({"status": "ready"})

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        assert self._server.metrics_registry is not None
        return web.Response(
            body=render(self._server.metrics_registry),
            headers={"Content-Type": "text/plain; version=0.0.4"},
        )

    async def _relay(self, request: web.Request) -> web.Response:
        """A relay URL fetched without a websocket upgrade (upgrades never get here)."""
        environment_id = request.match_info["id"]
        try:
            self._server.signer.verify(environment_id, request.query_string, now=time.time())
        except UrlRejected as exc:
            self._server.registry_stats.upgrades[exc.reason.value] += 1
            log.info("refused relay websocket for %r: %s", environment_id[:64], exc)
            return _error_response(exc.reason.http_status, exc.reason.value, exc.detail)
        if request.headers.get("Upgrade", "").strip().lower() == "websocket":
            # Only after a kept-alive /validate on this connection (port.py).
            return _error_response(
                400,
                "upgrade_not_first",
                "a relay websocket upgrade must be the first request of its connection",
            )
        return _error_response(400, "websocket_required", "expected a websocket upgrade")


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
