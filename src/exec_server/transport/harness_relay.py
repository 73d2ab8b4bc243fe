"""The harness's relay stream over a rendezvous, surviving physical reconnects.

:func:`connect_harness_relay` dials a ``role=harness`` rendezvous URL and returns a
:class:`HarnessRelayChannel`: one reliable relay stream, as a
:class:`~exec_server.transport.channel.MessageChannel`, on a
:class:`~exec_server.transport.relay_connection.RelayConnection` that the channel's
sockets (:class:`~exec_server.transport.harness_sockets.HarnessSockets`) drive over one
socket after another. When the socket drops, they dial the same URL again (the project's
one reconnect policy, :mod:`~exec_server.transport.reconnect`: backoff from 0.1 s to 2 s,
transient errors only, for up to ``reconnect_deadline_s``) and the stream resumes on the
new socket, so nothing is lost or repeated. ``alternates`` are the same URL on other nodes of a
rendezvous cluster (:mod:`~exec_server.transport.failover`): each attempt goes through
the URL and then every alternate, and the node that answered is tried first next time.
A legacy Codex environment cannot resume: the channel then ends and the SDK falls back
to resuming its session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiohttp import ClientSession

from ..relay.stream_mux import MuxRole
from .failover import dial_first
from .harness_sockets import HARNESS_RECONNECT_DEADLINE_S, HarnessSockets
from .relay_connection import RelayConfig, RelayConnection, dial_relay_socket
from .relay_status import StatusCallback
from .websocket import AnyWebSocket

__all__ = [
    "CLOSE_FLUSH_S",
    "HARNESS_RECONNECT_DEADLINE_S",
    "HarnessRelayChannel",
    "connect_harness_relay",
    "is_rendezvous_harness_url",
]

CLOSE_FLUSH_S = 0.5
"""On close, how long to let the writer flush the stream's reset frame."""


def is_rendezvous_harness_url(url: str) -> bool:
    """True when the URL's query has ``role=harness`` (how Codex picks the relay)."""
    return "harness" in parse_qs(urlsplit(url).query).get("role", [])


class HarnessRelayChannel:
    """One harness stream over a rendezvous (see the module docstring).

    The channel owns its sockets (:class:`~exec_server.transport.harness_sockets.
    HarnessSockets`: the HTTP session, the current socket, the supervisor task, all
    closed by :meth:`close`).
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
        self.connection = RelayConnection(MuxRole.HARNESS, config, on_status=on_status)
        self.channel = self.connection.open_channel()
        self.stream_id = self.channel.stream_id
        self.sockets = HarnessSockets(
            url,
            http,
            self.connection,
            stream_id=self.stream_id,
            headers=headers,
            reconnect_deadline_s=reconnect_deadline_s,
            max_message_bytes=max_message_bytes,
            alternates=alternates,
        )
        self.sockets.supervise(ws, finished=lambda: self.channel.ended, give_up=self.channel.end)

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
        await self.sockets.close()


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
