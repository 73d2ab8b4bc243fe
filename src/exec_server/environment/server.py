"""The environment server: shared state plus the local websocket and stdio listeners.

One :class:`ExecServer` holds the session registry and the filesystem handler that
every connection shares, whatever it arrives on (local websocket, stdio, or a relay
virtual stream: each is just a :class:`MessageChannel` given to
:meth:`ExecServer.serve_channel`).

Local websocket security: a browser page must not be able to drive a local
exec-server, so any request carrying an ``Origin`` header is refused unless that
origin was explicitly allowed. An optional bearer token (``--token-file``), or Codex
0.171's ``--ws-auth`` (:mod:`.ws_auth`), gates the websocket upgrade (never
``/readyz``); secrets are compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiohttp import web

from ..transport.bearer import bearer_matches
from ..transport.channel import MessageChannel
from ..transport.listen_url import ListenUrlError, parse_ip_port_url
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES, WebSocketChannel
from .fs_handler import FileSystemHandler
from .processor import ConnectionProcessor
from .session import SessionConfig, SessionRegistry
from .ws_auth import WsAuth

__all__ = ["ExecServer", "ListenAddress", "ListenUrlError", "ServerConfig", "parse_listen_url"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN_URL = "ws://127.0.0.1:0"
#: Grace given to open websockets to close during shutdown.
SHUTDOWN_CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ListenAddress:
    """Either ``stdio`` or a websocket host/port."""

    stdio: bool = False
    host: str = "127.0.0.1"
    port: int = 0


def parse_listen_url(url: str) -> ListenAddress:
    """Parse ``ws://IP:PORT`` or ``stdio``/``stdio://`` (Codex's accepted forms)."""
    if url in ("stdio", "stdio://"):
        return ListenAddress(stdio=True)
    host, port = parse_ip_port_url(url, "ws", "`ws://IP:PORT` or `stdio`")
    return ListenAddress(host=host, port=port)


@dataclass(frozen=True)
class ServerConfig:
    session: SessionConfig = field(default_factory=SessionConfig)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Bearer token required on the websocket upgrade; None disables auth.
    token: str | None = None
    #: Codex 0.171's ``--ws-auth`` policy (capability token or signed JWT), if any.
    ws_auth: WsAuth | None = None
    #: Browser origins allowed to connect (exact ``scheme://host[:port]``).
    allowed_origins: frozenset[str] = frozenset()


class ExecServer:
    """Shared server state; serves any number of channels concurrently."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.registry = SessionRegistry(self.config.session)
        self.fs = FileSystemHandler()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    async def serve_channel(self, channel: MessageChannel) -> None:
        """Run one connection to completion."""
        await ConnectionProcessor(channel, self.registry, self.fs).run()

    # --- local websocket -------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/", self._websocket)
        return app

    async def start_websocket(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start listening; return the bound ``ws://IP:PORT`` URL."""
        runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound = server.sockets[0].getsockname()
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        return f"ws://{bound_host}:{bound[1]}"

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.config.allowed_origins:
            log.warning("refused websocket from browser origin %s", origin)
            return web.Response(
                status=403,
                text="cross-origin websocket connections are not allowed "
                "(start the server with --allow-origin to permit this origin)\n",
            )
        if self.config.ws_auth is not None:
            refusal = self.config.ws_auth.refusal(request.headers.get("Authorization"))
            if refusal is not None:
                return web.Response(status=401, text=refusal)
        if self.config.token is not None and not bearer_matches(
            request.headers.get("Authorization"), self.config.token
        ):
            return web.Response(
                status=401,
                text="missing or invalid bearer token\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        ws = web.WebSocketResponse(
            compress=False,
            max_msg_size=self.config.max_message_bytes,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a websocket upgrade\n")
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self.serve_channel(WebSocketChannel(ws, _peer(request)))
        finally:
            self._sockets.discard(ws)
        return ws

    async def close(self) -> None:
        """Stop listening, close connections and reap every session's processes."""
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(SHUTDOWN_CLOSE_TIMEOUT_S):
                    await ws.close(message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.registry.close()


def _peer(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return None
