"""The environment server: shared state plus the local websocket listener.

One :class:`ExecServer` holds the session registry and the filesystem handler that
every connection shares, whatever it arrives on (local websocket, stdio, or a relay
virtual stream: each is just a :class:`MessageChannel` given to
:meth:`ExecServer.serve_channel`).

Local websocket security (:mod:`.ws_listener`): a browser page must not be able to
drive a local exec-server, so any request carrying an ``Origin`` header is refused
unless that origin was explicitly allowed. An optional bearer token
(``--token-file``), or Codex 0.171's ``--ws-auth`` (:mod:`.ws_auth`), gates the
websocket upgrade (never ``/readyz``); secrets are compared in constant time.

Every websocket connection runs in one :class:`asyncio.TaskGroup` owned by
:meth:`ExecServer.serve_websocket`; stopping it stops listening, closes the open
sockets (giving them :data:`SHUTDOWN_CLOSE_TIMEOUT_S`) and only then returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..transport.channel import MessageChannel
from ..transport.listen_url import ListenUrlError, parse_ip_port_url
from ..transport.websocket import DEFAULT_MAX_MESSAGE_BYTES
from .connection import ConnectionProcessor
from .fs_handler import FileSystemHandler
from .session import SessionConfig, SessionRegistry
from .ws_auth import WsAuth
from .ws_listener import UpgradePolicy, WebSocketServerChannel, start_listener

__all__ = ["ExecServer", "ListenAddress", "ListenUrlError", "ServerConfig", "parse_listen_url"]

log = logging.getLogger(__name__)

DEFAULT_LISTEN_URL = "ws://127.0.0.1:0"
#: Grace given to open websockets to close during shutdown.
SHUTDOWN_CLOSE_TIMEOUT_S = 2.0
SHUTDOWN_MESSAGE = "server shutting down"


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
        self._stop: asyncio.Event | None = None
        self._serving: asyncio.Task[None] | None = None

    async def serve_channel(self, channel: MessageChannel) -> None:
        """Run one connection to completion."""
        await ConnectionProcessor(channel, self.registry, self.fs).run()

    # --- local websocket -------------------------------------------------------

    async def serve_websocket(
        self,
        host: str,
        port: int,
        *,
        stop: asyncio.Event,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        """Serve websockets on ``host:port`` until ``stop`` is set.

        ``on_listening`` gets the bound ``ws://IP:PORT`` URL once connections are
        accepted. Returns after every connection ended.
        """
        config = self.config
        policy = UpgradePolicy(
            allowed_origins=config.allowed_origins, ws_auth=config.ws_auth, token=config.token
        )
        sockets: dict[WebSocketServerChannel, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as connections:

            async def serve_socket(channel: WebSocketServerChannel) -> None:
                try:
                    await self.serve_channel(channel)
                finally:
                    sockets.pop(channel, None)

            def accepted(channel: WebSocketServerChannel) -> None:
                sockets[channel] = connections.create_task(serve_socket(channel))

            listener = await start_listener(
                host,
                port,
                policy=policy,
                max_message_bytes=config.max_message_bytes,
                on_connected=accepted,
            )
            try:
                if on_listening is not None:
                    on_listening(_url_of(listener))
                await stop.wait()
            finally:
                listener.close()
                for channel in list(sockets):
                    await channel.close(SHUTDOWN_MESSAGE)
                if sockets:
                    await asyncio.wait(sockets.values(), timeout=SHUTDOWN_CLOSE_TIMEOUT_S)
                for task in sockets.values():
                    task.cancel()

    async def start_websocket(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start :meth:`serve_websocket` in a task this server owns; return the bound
        ``ws://IP:PORT`` URL. :meth:`close` stops it."""
        if self._serving is not None:
            raise RuntimeError("the websocket listener is already running")
        loop = asyncio.get_running_loop()
        listening: asyncio.Future[str] = loop.create_future()
        self._stop = asyncio.Event()
        serving = self._serving = loop.create_task(
            self.serve_websocket(host, port, stop=self._stop, on_listening=listening.set_result),
            name="exec-server websocket listener",
        )
        started: set[asyncio.Future[Any]] = {listening, serving}
        try:
            await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.close()
            raise
        if not listening.done():
            self._serving = None
            serving.result()  # raises what stopped it (e.g. the address is in use)
            raise RuntimeError("the websocket listener stopped before listening")
        return listening.result()

    async def close(self) -> None:
        """Stop listening, close connections and reap every session's processes."""
        if self._serving is not None:
            assert self._stop is not None
            self._stop.set()
            serving, self._serving = self._serving, None
            await serving
        await self.registry.close()


def _url_of(listener: asyncio.Server) -> str:
    bound = listener.sockets[0].getsockname()
    bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return f"ws://{bound_host}:{bound[1]}"
