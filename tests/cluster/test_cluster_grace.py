"""What other nodes do when a node goes away (grace periods, then resets), and what a
loss of frames between two nodes does to legacy and reliable streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from cluster_support import TOKEN, WAIT_S, Cluster, eventually, wait_online

from exec_server.relay.control import CONTROL_SUBPROTOCOL, PeerOffline, decode_control
from exec_server.relay.frame_codec import (
    RELIABLE_CAPABILITY_BIT,
    RelayFrame,
    data_frame,
    decode_frame,
    encode_frame,
)
from exec_server.rendezvous.cluster.nats_server import EmbeddedNats
from exec_server.rendezvous.cluster_router import ClusterRouter
from exec_server.rendezvous.router import ResetReason

GRACE_S = 1.0
Ws = aiohttp.ClientWebSocketResponse


@pytest.fixture
async def short_grace(nats_server: EmbeddedNats) -> AsyncIterator[Cluster]:
    cluster = Cluster(nats_server)
    try:
        for _ in range(2):
            await cluster.add_node(environment_grace_s=GRACE_S, harness_grace_s=GRACE_S)
        yield cluster
    finally:
        await cluster.close()


async def _pair(http: aiohttp.ClientSession, cluster: Cluster) -> tuple[Ws, Ws]:
    """An environment socket on n1 and a harness socket (control subprotocol) on n2."""
    async with http.post(
        f"{cluster.nodes[0].base_url}/cloud/environment/env/register",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        environment = await http.ws_connect((await resp.json())["url"], max_msg_size=0)
    await wait_online(cluster.nodes[1], "env")
    harness = await http.ws_connect(
        cluster.harness_url("env", 2), max_msg_size=0, protocols=(CONTROL_SUBPROTOCOL,)
    )
    return environment, harness


async def _next_frame(ws: Ws) -> RelayFrame:
    while True:
        msg = await ws.receive(timeout=WAIT_S)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return decode_frame(msg.data)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg


async def _open(environment: Ws, harness: Ws, stream_id: str, flag: int = 0) -> None:
    await harness.send_bytes(encode_frame(data_frame(stream_id, 0, b"hi", ack_bits=flag)))
    frame = await _next_frame(environment)
    assert frame.stream_id == stream_id


def _reset_reason(frame: RelayFrame) -> str:
    assert frame.body is not None and frame.body.kind == "reset", frame
    return str(frame.body.reason)


async def test_a_gone_harness_node_resets_its_streams_after_the_harness_grace(
    short_grace: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        environment, harness = await _pair(http, short_grace)
        await _open(environment, harness, "s")
        await short_grace.nodes[1].close()  # n2 leaves: its harness socket goes with it
        frame = await _next_frame(environment)
        assert (frame.stream_id, _reset_reason(frame)) == ("s", ResetReason.HARNESS_OFFLINE)
        await environment.close()


async def test_a_gone_environment_node_resets_harness_streams_after_the_grace(
    short_grace: Cluster,
) -> None:
    async with aiohttp.ClientSession() as http:
        environment, harness = await _pair(http, short_grace)
        await _open(environment, harness, "s")
        await short_grace.nodes[0].close()  # n1 leaves with the environment's socket
        offline = await harness.receive(timeout=WAIT_S)
        assert offline.type is aiohttp.WSMsgType.TEXT
        assert isinstance(decode_control(offline.data), PeerOffline)
        frame = await _next_frame(harness)
        assert (frame.stream_id, _reset_reason(frame)) == ("s", ResetReason.ENVIRONMENT_OFFLINE)
        await harness.close()


async def test_frames_lost_between_nodes_reset_legacy_streams_only(short_grace: Cluster) -> None:
    n1, n2 = (node.router for node in short_grace.nodes)
    assert isinstance(n1, ClusterRouter) and isinstance(n2, ClusterRouter)
    async with aiohttp.ClientSession() as http:
        environment, harness = await _pair(http, short_grace)
        await _open(environment, harness, "legacy")
        await _open(environment, harness, "reliable", RELIABLE_CAPABILITY_BIT)
        await environment.send_bytes(encode_frame(data_frame("legacy", 0, b"out")))
        assert (await _next_frame(harness)).stream_id == "legacy"
        # What the frame bus reports on both nodes when frames went missing between them.
        n1.channel_lost("n2", "env")
        n2.channel_lost("n1", "env")
        to_environment = await _next_frame(environment)
        to_harness = await _next_frame(harness)
        for frame in (to_environment, to_harness):
            assert (frame.stream_id, _reset_reason(frame)) == (
                "legacy",
                ResetReason.RELAY_ROUTE_LOST,
            )
        await eventually(lambda: n2.stream_count() == 1, "only the reliable stream is left")
        await harness.send_bytes(
            encode_frame(data_frame("reliable", 1, b"still", ack_bits=RELIABLE_CAPABILITY_BIT))
        )
        frame = await _next_frame(environment)
        assert frame.stream_id == "reliable"
        await harness.close()
        await environment.close()
