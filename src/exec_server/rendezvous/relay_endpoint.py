"""``GET /relay/{id}``: admitting relay websockets and serving each until it ends.

The upgrade is checked in picows' request callback, before the 101: the signed URL
(401/403, :mod:`~exec_server.rendezvous.url_signing`), then whether this node may take
new sockets (503). An admitted socket (:class:`~exec_server.rendezvous.relay_socket.RelaySocket`)
is served by a task the endpoint owns: an environment socket is first claimed
(:meth:`Router.claim`, a cluster node may refuse it), then attached to the router,
read until it closes, breaks the protocol or goes silent (``pong_timeout``), and
detached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import picows
from aiohttp import WSCloseCode

from ..relay.control import CONTROL_SUBPROTOCOL
from .errors import SocketProtocolError, UrlRejected
from .relay_socket import RelaySocket, error_upgrade, relay_protocol
from .router_config import REPLACED_CLOSE_CODE
from .socket_peer import SocketPeer
from .url_signing import RELAY_PATH_PREFIX, UrlRole

if TYPE_CHECKING:
    from .server import RendezvousServer

__all__ = ["RelayEndpoint"]

log = logging.getLogger(__name__)


class RelayEndpoint:
    """The relay websockets of one :class:`~exec_server.rendezvous.server.RendezvousServer`."""

    def __init__(self, server: RendezvousServer) -> None:
        self._server = server
        self._sessions: set[asyncio.Task[None]] = set()

    def protocol(self) -> asyncio.BaseProtocol:
        """A protocol for one connection whose first request is a relay upgrade."""
        return relay_protocol(self._upgrade, self._server.config.max_message_bytes)

    async def aclose(self) -> None:
        """Cancel the sessions still running (their sockets were closed) and wait."""
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)

    # --- the upgrade (inside picows' callback) ----------------------------------------

    def _upgrade(self, request: picows.WSUpgradeRequest) -> Any:
        server = self._server
        path, _, query = request.path.decode("latin-1").partition("?")
        environment_id = unquote(path[len(RELAY_PATH_PREFIX) :])
        if "/" in environment_id:
            return error_upgrade(HTTPStatus.NOT_FOUND, "not_found", "Not Found")
        try:
            grant = server.signer.verify(environment_id, query, now=time.time())
        except UrlRejected as exc:
            server.registry_stats.upgrades[exc.reason.value] += 1
            log.info("refused relay websocket for %r: %s", environment_id[:64], exc)
            return error_upgrade(exc.reason.http_status, exc.reason.value, exc.detail)
        refusal = server.not_ready()
        if refusal is not None:
            return error_upgrade(HTTPStatus.SERVICE_UNAVAILABLE, *refusal)
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        control = CONTROL_SUBPROTOCOL in (p.strip() for p in offered.split(","))
        socket = RelaySocket(
            grant.role,
            environment_id,
            control,
            server.config.max_message_bytes,
            lambda s: self._start(s, grant.nonce),
        )
        headers = {"Sec-WebSocket-Protocol": CONTROL_SUBPROTOCOL} if control else None
        return picows.WSUpgradeResponseWithListener(
            picows.WSUpgradeResponse.create_101_response(headers), socket
        )

    def _start(self, socket: RelaySocket, nonce: str) -> None:
        task = asyncio.get_running_loop().create_task(self._session(socket, nonce))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)
        # The session's ``finally`` drops the socket; a task cancelled before its first
        # step (a close racing a fresh socket) never gets there.
        task.add_done_callback(lambda _task: socket.abort())

    # --- one socket's life ------------------------------------------------------------

    async def _session(self, socket: RelaySocket, nonce: str) -> None:
        server = self._server
        router = server.router
        server.registry_stats.upgrades["accepted"] += 1
        role = socket.role
        peer = router.new_peer(
            socket,
            role,
            socket.environment_id,
            nonce,
            label=_label(role, socket.environment_id, socket.peername),
            control=socket.control,
        )
        try:
            if role is UrlRole.ENVIRONMENT:
                refused = await router.claim(peer)
                if refused is not None:
                    await socket.close(code=refused, message=b"another rendezvous socket won")
                    return
            await self._serve(socket, peer)
        finally:
            socket.abort()

    async def _serve(self, socket: RelaySocket, peer: SocketPeer) -> None:
        server = self._server
        router = server.router
        environment = peer.role is UrlRole.ENVIRONMENT
        replaced = router.attach(peer)
        server.track(peer)
        if replaced is not None:
            server.spawn(
                replaced.aclose(
                    code=REPLACED_CLOSE_CODE, message=b"replaced by a newer environment socket"
                )
            )
        if environment:
            server.spawn(server.seen(peer.environment_id))
        log.info("%s connected", peer.label)
        try:
            ended = await socket.serve(
                peer,
                router.on_environment_message,
                router.on_harness_message,
                server.keepalive,
                router.harness_message_now,
            )
            if isinstance(ended, SocketProtocolError):
                router.stats.protocol_errors[ended.reason] += 1
                log.info("%s closed (%d): %s", peer.label, ended.close_code, ended.message)
                await peer.aclose(code=ended.close_code, message=ended.message.encode()[:120])
            elif ended is not None:
                log.info("%s: %s; closing it", peer.label, ended)
                await peer.aclose(code=WSCloseCode.GOING_AWAY, message=ended.encode()[:120])
        finally:
            router.detach(peer)
            server.untrack(peer)
            await peer.aclose()
            if environment:
                server.spawn(server.seen(peer.environment_id))
            log.info("%s disconnected (close code %s)", peer.label, socket.close_code)


def _label(role: UrlRole, environment_id: str, peername: object) -> str:
    where = ""
    if isinstance(peername, tuple) and len(peername) >= 2:
        where = f" from {peername[0]}:{peername[1]}"
    return f"{role.value} socket for {environment_id}{where}"
