"""Shared fixtures: an in-process server reached over memory channels."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from inprocess import InProcessServer

from exec_server.environment.server import ExecServer, ServerConfig
from exec_server.environment.session import SessionConfig


@pytest.fixture
async def server() -> AsyncIterator[InProcessServer]:
    srv = ExecServer(ServerConfig(session=SessionConfig(detached_ttl_s=0.5)))
    holder = InProcessServer(srv)
    try:
        yield holder
    finally:
        for conn in holder.connections:
            await conn.close()
        await srv.close()
