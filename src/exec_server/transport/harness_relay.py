"""The harness's relay stream over a rendezvous, surviving physical reconnects.

:func:`connect_harness_relay` dials a ``role=harness`` rendezvous URL and returns a
:class:`HarnessRelayChannel`: one reliable relay stream, as a
:class:`~exec_server.transport.channel.MessageChannel`, on a
:class:`~exec_server.transport.relay_connection.RelayConnection` that the channel's
supervisor task drives over one socket after another. When the socket drops, the
supervisor dials the same URL again (the project's one reconnect policy,
:mod:`~exec_server.transport.reconnect`: backoff from 0.1 s to 2 s, transient errors
only, for up to ``reconnect_deadline_s``) and the stream resumes on the new socket, so
nothing is lost or repeated. ``alternates`` are the same URL on other nodes of a
rendezvous cluster (:mod:`~exec_server.transport.failover`): each attempt goes through
the URL and then every alternate, and the node that answered is tried first next time.
A legacy Codex environment cannot resume: the channel then ends and the SDK falls back
to resuming its session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientSession

from ..relay.stream_mux import MuxRole
from .failover import dial_first
from .reconnect import backoff, is_transient
from .relay_connection import (
    RelayConfig,
    RelayConnection,
    close_socket,
    dial_relay_socket,
)
from .relay_status import RelayStatus, StatusCallback
from .websocket import AnyWebSocket

__all__ = [
    "CLOSE_FLUSH_S",
    "HARNESS_RECONNECT_DEADLINE_S",
    "HarnessRelayChannel",
    "connect_harness_relay",
    "is_rendezvous_harness_url",
]

log = logging.getLogger(__name__)

HARNESS_RECONNECT_DEADLINE_S = 25.0
"""How long a harness keeps trying to get its relay socket back before giving up."""
HARNESS_RECONNECT_INITIAL_S = 0.1
HARNESS_RECONNECT_MAX_S = 2.0
CLOSE_FLUSH_S = 0.5
"""On close, how long to let the writer flush the stream's reset frame."""


def is_rendezvous_harness_url(url: str) -> bool:
    """True when the URL's query has ``role=harness`` (how Codex picks the relay)."""
    return "harness" in parse_qs(urlsplit(url).query).get("role", [])


class HarnessRelayChannel:
    """One harness stream over a rendezvous (see the module docstring).

    The channel owns its HTTP session, its current socket and its supervisor task
    (started here, cancelled and awaited by :meth:`close`).
    """

    transport_name = "relay"
    parse_error_prefix = "failed to parse relay JSON-RPC message from exec-server relay"

    def __init__(
        self,
        url: str,
        http: Any,
        ws: AnyWebSocket,
        *,
        headers: dict[str, str] | None,
        config: RelayConfig | None,
        reconnect_deadline_s: float,
        max_message_bytes: int,
        on_status: StatusCallback | None = None,
        alternates: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.alternates = list(alternates)
        self._http = http
        self._headers = headers
        self._max_message_bytes = max_message_bytes
        self.connection = RelayConnection(MuxRole.HARNESS, config, on_status=on_status)
        self.channel = self.connection.open_channel()
        self.stream_id = self.channel.stream_id
        self._reconnect_deadline_s = reconnect_deadline_s
        self.reconnects = 0
        self._ws: AnyWebSocket = ws
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(ws), name=f"relay supervisor {self.stream_id}"
        )

    async def _dial(self) -> AnyWebSocket:
        candidates = [self.url, *self.alternates]
        url, ws = await dial_first(
            candidates,
            lambda url: dial_relay_socket(
                self._http, url, headers=self._headers, max_message_bytes=self._max_message_bytes
            ),
        )
        if url != self.url:
            self.url, self.alternates = url, [other for other in candidates if other != url]
        return ws

    async def _supervise(self, ws: AnyWebSocket | None) -> None:
        while ws is not None:
            self._ws = ws
            reason = await self.connection.run_socket(ws)
            await close_socket(ws)
            if self.channel.ended:
                return
            log.info("relay socket lost (%s); reconnecting stream %s", reason, self.stream_id)
            self.connection.report(
                RelayStatus("reconnecting", grace_s=self._reconnect_deadline_s, detail=reason)
            )
            ws = await self._redial(reason)

    async def _redial(self, reason: str) -> AnyWebSocket | None:
        """A new socket, or ``None`` once the deadline passed or an error is not
        transient (the channel has then ended)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_deadline_s
        for delay in backoff(HARNESS_RECONNECT_INITIAL_S, HARNESS_RECONNECT_MAX_S):
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    ws = await self._dial()
            except Exception as exc:
                if not is_transient(exc) or loop.time() + delay >= deadline:
                    self.channel.end(f"relay reconnect failed: {reason}; last error: {exc}")
                    return None
                await asyncio.sleep(delay)
                continue
            self.reconnects += 1
            self.connection.report(RelayStatus("reconnected"))
            return ws
        return None  # pragma: no cover - backoff() never ends

    async def receive(self) -> bytes:
        return await self.channel.receive()

    async def send(self, message: bytes) -> None:
        await self.channel.send(message)

    async def close(self, reason: str | None = None) -> None:
        if not self.channel.ended:
            await self.channel.close(reason or "harness closed")
            # Let the writer put the reset on the wire before the socket goes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self.connection.flushed()
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._supervisor
        await close_socket(self._ws)
        await self._http.close()


async def connect_harness_relay(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    config: RelayConfig | None = None,
    reconnect_deadline_s: float = HARNESS_RECONNECT_DEADLINE_S,
    max_message_bytes: int = 64 * 1024 * 1024,
    on_status: StatusCallback | None = None,
    alternates: Sequence[str] = (),
) -> HarnessRelayChannel:
    """Dial a ``role=harness`` rendezvous URL and open one relay stream on it.

    ``on_status`` hears what the rendezvous reports about the environment
    (:class:`RelayStatus`): offline and being waited for, back online, or gone.
    ``alternates``: the same URL on other nodes of a rendezvous cluster, dialed in turn
    when the first does not answer (and when the socket is lost later).
    """
    http = ClientSession()
    candidates = [url, *alternates]
    try:
        url, ws = await dial_first(
            candidates,
            lambda candidate: dial_relay_socket(
                http,
                candidate,
                headers=headers,
                timeout_s=timeout_s,
                max_message_bytes=max_message_bytes,
            ),
        )
    except BaseException:
        await http.close()
        raise
    return HarnessRelayChannel(
        url,
        http,
        ws,
        headers=headers,
        config=config,
        reconnect_deadline_s=reconnect_deadline_s,
        max_message_bytes=max_message_bytes,
        on_status=on_status,
        alternates=[other for other in candidates if other != url],
    )
