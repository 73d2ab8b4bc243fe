"""Shared by the cluster tests: short leases, polling waits, node configs, rendezvous nodes
in this process (imported by name; a test module never imports ``conftest``, whose name
other test folders share)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from exec_server.environment.remote import RemoteEnvironment, RemoteEnvironmentConfig
from exec_server.environment.server import ExecServer
from exec_server.rendezvous.cluster.nats_connection import NatsClusterConfig
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_state import NatsClusterState
from exec_server.rendezvous.server import RendezvousConfig, RendezvousServer
from exec_server.transport.failover import rebase_url

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


# --- rendezvous nodes in this process -----------------------------------------------------

TOKEN = "cluster-test-token"
NODE_HEARTBEAT_S = 0.25
NODE_LEASE_S = 2.0
"""Leases of rendezvous nodes under test: long enough that a loaded 2-CPU box does not
lose one by accident, short enough that a dead node is noticed within seconds."""


class Cluster:
    """An embedded NATS and rendezvous nodes ``n1``, ``n2``, ... in this process."""

    def __init__(self, nats_server: EmbeddedNats) -> None:
        self.nats = nats_server
        self.nodes: list[RendezvousServer] = []
        self._environments: list[tuple[ExecServer, asyncio.Task[None]]] = []

    async def add_node(self, **overrides: Any) -> RendezvousServer:
        node_id = f"n{len(self.nodes) + 1}"
        settings: dict[str, Any] = {
            "token": TOKEN,
            "environment_grace_s": 10.0,
            "harness_grace_s": 10.0,
            "ping_interval_s": None,
            "cluster": node_config(
                self.nats,
                node_id,
                heartbeat_interval_s=NODE_HEARTBEAT_S,
                lease_s=NODE_LEASE_S,
            ),
        }
        settings.update(overrides)
        node = RendezvousServer(RendezvousConfig(**settings))
        await node.start()
        self.nodes.append(node)
        return node

    def bases(self, *order: int) -> str:
        """Base URLs of the nodes (1-based numbers, in this order), comma separated."""
        numbers = order or tuple(range(1, len(self.nodes) + 1))
        return ",".join(self.nodes[number - 1].base_url for number in numbers)

    def harness_url(self, environment_id: str, node: int) -> str:
        """A harness URL signed by node 1, for a socket on node ``node``."""
        return rebase_url(self.nodes[0].harness_url(environment_id), self.nodes[node - 1].base_url)

    async def start_environment(self, environment_id: str, *nodes: int) -> RemoteEnvironment:
        """Our environment, registered with these nodes (the first one first)."""
        server = ExecServer()
        environment = RemoteEnvironment(
            server,
            RemoteEnvironmentConfig(
                base_url=self.bases(*nodes),
                environment_id=environment_id,
                token=TOKEN,
                initial_backoff_s=0.1,
                max_backoff_s=1.0,
            ),
        )
        task = asyncio.ensure_future(environment.run())
        self._environments.append((server, task))
        await asyncio.wait_for(environment.connected.wait(), WAIT_S)
        return environment

    async def close(self) -> None:
        for server, task in self._environments:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await server.close()
        for node in self.nodes:
            await node.close()


async def wait_online(node: RendezvousServer, environment_id: str) -> None:
    await eventually(lambda: node.router.is_online(environment_id), f"{node} sees it online")
