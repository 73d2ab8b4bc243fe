"""Shared fixtures: an in-process server reached over memory channels, once pulled
from by the connection and once handing messages over eagerly (as the websocket)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from inprocess import InProcessServer

from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig


@pytest.fixture(params=["pull", "eager"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[InProcessServer]:
    srv = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=0.5)))
    holder = InProcessServer(srv, eager=request.param == "eager")
    try:
        yield holder
    finally:
        for conn in holder.connections:
            await conn.close()
        await srv.close()
