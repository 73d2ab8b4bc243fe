"""The harness end's sockets to a rendezvous: :class:`HarnessSockets`.

Both harness channels over a rendezvous, the cleartext one
(:mod:`~exec_server.transport.harness_relay`) and the encrypted one
(:mod:`~exec_server.transport.noise_channel`), keep one socket at a time to the
rendezvous and drive their :class:`~exec_server.transport.relay_connection.
RelayConnection` over it. When the socket is lost they dial again with the project's one
reconnect policy (:mod:`~exec_server.transport.reconnect`: backoff from 0.1 s to 2 s,
transient errors only, until ``reconnect_deadline_s``), each attempt going through the
URL and then every alternate (the same URL on other nodes of a rendezvous cluster,
:mod:`~exec_server.transport.failover`); the node that answered is tried first next time.

This class is that shared part: the URLs, the current socket, the supervisor task that
runs the connection on one socket after another, and closing them. What ends the loop
(the stream ended, or a handshake failed) and what giving up means (ending the stream,
or failing its handshake) are the channel's, passed in as callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .failover import dial_first
from .reconnect import backoff, is_transient
from .relay_connection import RelayConnection, close_socket, dial_relay_socket
from .relay_status import RelayStatus
from .websocket import AnyWebSocket

__all__ = [
    "HARNESS_RECONNECT_DEADLINE_S",
    "HARNESS_RECONNECT_INITIAL_S",
    "HARNESS_RECONNECT_MAX_S",
    "HarnessSockets",
]

log = logging.getLogger(__name__)

HARNESS_RECONNECT_DEADLINE_S = 25.0
"""How long a harness keeps trying to get its relay socket back before giving up."""
HARNESS_RECONNECT_INITIAL_S = 0.1
HARNESS_RECONNECT_MAX_S = 2.0


class HarnessSockets:
    """A harness stream's sockets to a rendezvous (see the module docstring).

    It owns the HTTP session it dials with, the current socket and the supervisor task
    (started by :meth:`supervise`, cancelled and awaited by :meth:`close`).
    """

    def __init__(
        self,
        url: str,
        http: Any,
        connection: RelayConnection,
        *,
        stream_id: str,
        headers: dict[str, str] | None = None,
        reconnect_deadline_s: float = HARNESS_RECONNECT_DEADLINE_S,
        max_message_bytes: int,
        alternates: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.alternates = list(alternates)
        """The same URL on other nodes of a rendezvous cluster (tried in turn)."""
        self.reconnects = 0
        self.ws: AnyWebSocket | None = None
        """The current socket (the last one, once the supervisor stopped)."""
        self._http = http
        self._connection = connection
        self._stream_id = stream_id
        self._headers = headers
        self._reconnect_deadline_s = reconnect_deadline_s
        self._max_message_bytes = max_message_bytes
        self._supervisor: asyncio.Task[None] | None = None

    async def dial(self) -> AnyWebSocket:
        """A socket to the URL or, failing that, to the first alternate that answers
        (which becomes the URL); raises the last failure."""
        candidates = [self.url, *self.alternates]
        url, ws = await dial_first(
            candidates,
            lambda candidate: dial_relay_socket(
                self._http,
                candidate,
                headers=self._headers,
                max_message_bytes=self._max_message_bytes,
            ),
        )
        if url != self.url:
            self.url, self.alternates = url, [other for other in candidates if other != url]
        return ws

    def supervise(
        self, ws: AnyWebSocket, *, finished: Callable[[], bool], give_up: Callable[[str], None]
    ) -> None:
        """Drive the connection over ``ws`` and, each time a socket is lost while
        ``finished()`` is false, over a new one; ``give_up(why)`` when none comes back
        in time (or an error is not transient)."""
        self.ws = ws
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(ws, finished, give_up),
            name=f"relay supervisor {self._stream_id}",
        )

    async def _supervise(
        self,
        ws: AnyWebSocket | None,
        finished: Callable[[], bool],
        give_up: Callable[[str], None],
    ) -> None:
        while ws is not None:
            self.ws = ws
            reason = await self._connection.run_socket(ws)
            await close_socket(ws)
            if finished():
                return
            log.info("relay socket lost (%s); reconnecting stream %s", reason, self._stream_id)
            self._connection.report(
                RelayStatus("reconnecting", grace_s=self._reconnect_deadline_s, detail=reason)
            )
            ws = await self._redial(reason, give_up)

    async def _redial(self, reason: str, give_up: Callable[[str], None]) -> AnyWebSocket | None:
        """A new socket, or ``None`` (after ``give_up``) once the deadline passed or an
        error is not transient."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_deadline_s
        for delay in backoff(HARNESS_RECONNECT_INITIAL_S, HARNESS_RECONNECT_MAX_S):
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    ws = await self.dial()
            except Exception as exc:
                if not is_transient(exc) or loop.time() + delay >= deadline:
                    give_up(f"relay reconnect failed: {reason}; last error: {exc}")
                    return None
                await asyncio.sleep(delay)
                continue
            self.reconnects += 1
            self._connection.report(RelayStatus("reconnected"))
            return ws
        return None  # pragma: no cover - backoff() never ends

    async def close(self) -> None:
        """Stop the supervisor, close the current socket and the HTTP session."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        if self.ws is not None:
            await close_socket(self.ws)
        await self._http.close()
