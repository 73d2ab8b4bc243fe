"""One listening port for the registry's HTTP API and the relay websockets.

The registry API (``POST``s with bodies, ``/metrics``...) is aiohttp's; the relay
websockets carry every byte of every session: picows answers their upgrade, then the
:class:`~exec_server.rendezvous.relay_socket.RelaySocket` reads the frames itself
(``benchmarks/rendezvous_cpu_bench.py`` measures it). A :class:`PortSplitter` is the protocol
of every accepted connection until the head of its first request is in: a websocket
upgrade of a relay URL (``GET /relay/...`` with ``Upgrade: websocket``) is handed to a
picows protocol, fed the request head, and whatever followed the head (frames a client
sent without waiting for the 101) goes to the protocol the connection has after picows
answered: the relay socket's, in order. Anything else goes to aiohttp's request handler,
fed the bytes read so far. The registry answers
with ``Connection: close`` (see :func:`close_after_response`), so every request that
could be an upgrade is the first request of its connection, and reaches the splitter.

One exception: ``POST .../validate`` keeps its connection. It is on the critical path
of every Noise handshake (the environment asks it before answering message 1), a new
TCP connection per handshake cost about 2 ms there, and its caller is an executor,
which dials its relay websocket on a connection of its own (ours and Codex's). A relay
upgrade that does arrive on a kept connection reaches aiohttp and is refused with a
clear reason (``upgrade_not_first``), never served half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from aiohttp import web

from .url_signing import RELAY_PATH_PREFIX

__all__ = [
    "HEAD_LIMIT_BYTES",
    "PortSplitter",
    "close_after_response",
    "is_relay_upgrade",
    "keeps_connection",
]

log = logging.getLogger(__name__)

HEAD_LIMIT_BYTES = 16 * 1024
"""A request head longer than this goes to aiohttp, which refuses it."""

HEAD_TIMEOUT_S = 10.0
"""How long a new connection may take to send the head of its first request."""

_RELAY_REQUEST_LINE = b"GET " + RELAY_PATH_PREFIX.encode()

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def is_relay_upgrade(head: bytes) -> bool:
    """Is this request head (up to the blank line) a websocket upgrade of a relay URL?"""
    if not head.startswith(_RELAY_REQUEST_LINE):
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


def keeps_connection(method: str, path: str) -> bool:
    """Is this a registry request whose connection stays open (module docstring)?"""
    return method == "POST" and path.endswith("/validate")


async def close_after_response(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp ``on_response_prepare`` hook: one request per registry connection (the
    header too: aiohttp closes a forced connection without saying so), except
    ``/validate``'s."""
    if keeps_connection(request.method, request.path):
        return
    response.force_close()
    response.headers["Connection"] = "close"


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Give ``data`` to a protocol as its transport would."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


class PortSplitter(asyncio.Protocol):
    """Reads the head of a connection's first request, then hands the connection to
    ``relay()`` (a relay upgrade) or ``http()`` (anything else)."""

    def __init__(self, http: ProtocolFactory, relay: ProtocolFactory) -> None:
        self._http = http
        self._relay = relay
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have its API.
        self._transport = stream = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, stream.abort)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0 and len(buffer) <= HEAD_LIMIT_BYTES:
            return
        if end >= 0 and is_relay_upgrade(bytes(buffer[:end])):
            self._hand_over(self._relay(), end + 4)
        else:
            self._hand_over(self._http(), len(buffer))

    def _hand_over(self, protocol: asyncio.BaseProtocol, head: int) -> None:
        """Give the connection to ``protocol`` with the first ``head`` bytes read; the
        rest goes to the connection's protocol after those (a relay socket takes over
        from picows once picows has answered the upgrade request)."""
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        data = bytes(self._buffer)
        self._buffer.clear()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not transport.is_closing():
            _feed(protocol, data[:head])
        if len(data) > head and not transport.is_closing():
            _feed(transport.get_protocol(), data[head:])

    def eof_received(self) -> bool:
        return False  # the peer gave up before its request: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
