"""Shared by the cluster tests: short leases, polling waits, node configs (imported by
name; a test module never imports ``conftest``, whose name other test folders share)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from exec_server.rendezvous.cluster.nats_connection import NatsClusterConfig
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_state import NatsClusterState

HEARTBEAT_S = 0.1
LEASE_S = 0.6
"""Short leases so death is noticed quickly; generous enough for a loaded 2-CPU box
only because no test asserts that a node stays alive through a stall longer than it."""

WAIT_S = 15.0
"""Longest wait for an expected state (never asserted as a duration)."""
POLL_S = 0.02

MakeNode = Callable[..., Awaitable[NatsClusterState]]


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (sync or async) until it holds; fail after :data:`WAIT_S`."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    for _ in itertools.count():
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(POLL_S)


def node_config(server: EmbeddedNats, node_id: str, **overrides: Any) -> NatsClusterConfig:
    settings: dict[str, Any] = {
        "servers": (server.url,),
        "node_id": node_id,
        "heartbeat_interval_s": HEARTBEAT_S,
        "lease_s": LEASE_S,
        "reconnect_wait_s": 0.1,
    }
    settings.update(overrides)
    return NatsClusterConfig(**settings)
