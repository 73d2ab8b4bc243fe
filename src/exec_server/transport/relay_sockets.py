"""Opening and closing relay websockets as
:meth:`~exec_server.transport.relay_connection.RelayConnection.run_socket` wants them:
no compression, pings answered by the connection's reader (``autoping=False``), the
rendezvous control subprotocol offered, and a close that never hangs on a silent peer.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import ClientSession, ClientWebSocketResponse

from ..relay.control import CONTROL_SUBPROTOCOL
from .picows_socket import PicowsRelaySocket, dial_picows_relay_socket
from .websocket import AnyWebSocket, dial_websocket

__all__ = [
    "SOCKET_CLOSE_TIMEOUT_S",
    "RelaySocket",
    "close_socket",
    "dial_environment_socket",
    "dial_relay_socket",
]

RelaySocket = AnyWebSocket | PicowsRelaySocket
"""A socket :meth:`RelayConnection.run_socket` drives: aiohttp's, or picows' (the
environment's, which carries the output bytes)."""


#: How long closing a relay socket may wait for the peer's close frame.
SOCKET_CLOSE_TIMEOUT_S = 2.0


async def close_socket(ws: RelaySocket) -> None:
    """Close a websocket without ever hanging on an unresponsive peer."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SOCKET_CLOSE_TIMEOUT_S):
            await ws.close()


async def dial_environment_socket(
    url: str, *, timeout_s: float = 10.0, max_message_bytes: int = 64 * 1024 * 1024
) -> PicowsRelaySocket:
    """Open the environment's relay websocket as :meth:`RelayConnection.run_socket`
    wants it (the control subprotocol offered), on picows: every output byte crosses
    it, and picows frames and masks it in one copy."""
    return await dial_picows_relay_socket(
        url,
        timeout_s=timeout_s,
        max_message_bytes=max_message_bytes,
        protocols=(CONTROL_SUBPROTOCOL,),
    )


async def dial_relay_socket(
    http: ClientSession,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    max_message_bytes: int = 64 * 1024 * 1024,
) -> ClientWebSocketResponse:
    """Open a relay websocket as :meth:`RelayConnection.run_socket` wants it: no
    compression, pings answered by its reader, the control subprotocol offered."""
    return await dial_websocket(
        http,
        url,
        headers=headers,
        timeout_s=timeout_s,
        max_message_bytes=max_message_bytes,
        autoping=False,
        protocols=(CONTROL_SUBPROTOCOL,),
    )
