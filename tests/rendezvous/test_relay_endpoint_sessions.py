"""A relay socket's session owns the connection even if it never runs."""

from __future__ import annotations

import asyncio
from typing import Any

from exec_server.rendezvous.relay_endpoint import RelayEndpoint


class _Socket:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


async def test_a_session_cancelled_before_its_first_step_drops_its_socket() -> None:
    endpoint = RelayEndpoint(server=None)  # type: ignore[arg-type]
    socket: Any = _Socket()
    endpoint._start(socket, "nonce")
    await endpoint.aclose()  # cancels the task before it ever ran
    await asyncio.sleep(0)
    assert socket.aborted == 1
    assert not endpoint._sessions
